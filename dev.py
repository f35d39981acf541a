#!/usr/bin/env python3
"""Set up fedmm in ./.venv and run it: `python3 dev.py run [overrides]`, `python3 dev.py test [pytest args]`,
`python3 dev.py bench NAME` (benchmarks/NAME.py), `python3 dev.py lint` (ruff check and ruff format --check),
`python3 dev.py lock` (re-resolve requirements.lock), `python3 dev.py mutate [--sample N] [MODULE]` (mutation testing
with mutmut; MODULE e.g. fedavg, fedmm.metrics or fedmm.client; docs/TESTING.md).

Why a script and not a Makefile: a fresh machine has Python and git, not necessarily make. The environment is
installed from requirements.lock (every package pinned with its sha256, pip --require-hashes), then
requirements-nodeps.lock (data-only packages, hashed too, without their stale dependency pins), then fedmm itself
without dependencies; it is (re)installed only when pyproject.toml, a lock file or this file changed (a stamp in
.venv records their hash), so the second call starts at once.
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
LOCK = ROOT / "requirements.lock"
NODEPS = ROOT / "requirements-nodeps.lock"  # data-only packages with stale dependency pins (see the file)


def _digest() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", LOCK.name, NODEPS.name, "dev.py"):
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
    # The locked pip first (see pyproject.toml's dev extra), then the whole environment, torch's CPU build included,
    # exactly as locked; then fedmm (editable) on top of it.
    pinned_pip = _entry(LOCK.read_text(), "pip")
    if pinned_pip:  # absent only from a lock written before pip was locked (`python3 dev.py lock` adds it)
        (VENV / "pip.lock").write_text(pinned_pip)
        _pip("--require-hashes", "-r", str(VENV / "pip.lock"))
    _pip("--require-hashes", "-r", str(LOCK))
    _pip("--no-deps", "--require-hashes", "-r", str(NODEPS))
    _pip("--no-deps", "--no-build-isolation", "-e", ".")
    STAMP.write_text(_digest())


def _entry(lock_text: str, name: str) -> str:
    """One package's entry of a pip-compile lock: its `name==version` line and the hash lines that continue it."""
    out: list[str] = []
    for line in lock_text.splitlines(keepends=True):
        if line.startswith(f"{name}=="):
            out.append(line)
        elif out and line.startswith("    --hash"):
            out.append(line)
        elif out:
            break
    return "".join(out)


def _without_fedmm(text: str) -> str:
    """The lock less fedmm's own entry (`fedmm @ file:///...`, its comments and pip-compile's warning about it)."""
    out: list[str] = []
    in_fedmm = False
    for line in text.splitlines(keepends=True):
        if line.startswith(("# WARNING: pip install will require", "# Consider using a hashable URL")):
            continue
        in_fedmm = line.startswith("fedmm @") or (in_fedmm and line.startswith(" "))
        if not in_fedmm:
            out.append(line)
    return "".join(out)


def lock(args: list[str]) -> int:
    """Re-resolve requirements.lock with pip-tools, keeping today's pins unless `--upgrade[-package X]` is given.

    fedmm's own line (the dev extra names fedmm[...] extras) is dropped: fedmm is installed from the tree."""
    _pip("pip-tools>=7.4")
    cmd = [
        str(BIN / "pip-compile"),
        "-q",
        "--extra",
        "dev",
        "--generate-hashes",
        "--strip-extras",
        "--allow-unsafe",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "-o",
        LOCK.name,
        "pyproject.toml",
        *args,
    ]
    rc = subprocess.call(cmd, cwd=ROOT, env=dict(os.environ, CUSTOM_COMPILE_COMMAND="python3 dev.py lock"))
    if rc == 0:
        LOCK.write_text(_without_fedmm(LOCK.read_text()))
    return rc


def mutate(args: list[str], env: dict) -> int:
    """mutmut over the modules listed in pyproject.toml ([tool.mutmut] only_mutate), or over some of them (`fedavg`,
    `fl/strategy/fedavg.py`, `fedmm.fl.strategy.fedavg`, or a package such as `fedmm.client`); then its results.
    `--sample N` checks a seeded random N of each MODULE's mutants: the modules outside the pure core are reached by
    tests that train models, so each mutant costs seconds to minutes and all 3,000 of them would take hours."""
    mutmut = str(BIN / "mutmut")
    sample = None
    if args[:1] == ["--sample"]:
        if len(args) < 3 or not args[1].isdigit():
            print("error: give --sample N MODULE..., e.g. --sample 40 loop fedmm.client", file=sys.stderr)
            return 2
        sample, args = int(args[1]), args[2:]
    names = []
    for arg in args:
        dotted = arg.removeprefix("src/").removesuffix(".py").replace("/", ".")
        dotted = dotted if dotted.startswith("fedmm.") else None
        if dotted is None:  # a short name: the module whose file is called so
            import tomllib

            files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
            found = [f for f in files if Path(f).stem == arg or f.endswith(f"/{arg}") or f.endswith(f"/{arg}.py")]
            if not found:
                print(f"error: '{arg}' is not a module of [tool.mutmut] only_mutate", file=sys.stderr)
                return 2
            dotted = found[0].removeprefix("src/").removesuffix(".py").replace("/", ".")
        names.append(f"{dotted}.*")
    if sample is not None:
        import random

        subprocess.call([mutmut, "run", "fedmm.no_such_module.*"], cwd=ROOT, env=env)  # generates mutants only
        listed = _mutant_states(
            subprocess.run(
                [mutmut, "results", "--all", "true"], cwd=ROOT, env=env, capture_output=True, text=True
            ).stdout
        )
        picked = []
        for pattern in names:
            pool = sorted(n for n in listed if n.startswith(pattern[:-1]))
            picked += random.Random(pattern).sample(pool, min(sample, len(pool)))
        names = picked
    rc = subprocess.call([mutmut, "run", *names], cwd=ROOT, env=env)
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=ROOT, env=env, capture_output=True, text=True)
    print(mutation_scores(out.stdout, only=set(names) if sample is not None else None))
    print("surviving mutants: .venv/bin/mutmut results; one of them: .venv/bin/mutmut show NAME")
    return rc


def _mutant_states(results: str) -> dict[str, str]:
    """{mutant name: state} from `mutmut results --all true`."""
    import re

    found = (re.match(r"\s*(fedmm\.\S+__mutmut_\d+): (.+)$", line) for line in results.splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def mutation_scores(results: str, only: set[str] | None = None) -> str:
    """A markdown table of mutants per module from `mutmut results --all true` (of the mutants in `only`, when
    given): killed, survived, other (no tests, timeout, suspicious), and the score killed / all of them."""
    import re
    from collections import Counter, defaultdict

    counts: dict[str, Counter] = defaultdict(Counter)
    for name, state in _mutant_states(results).items():
        m = re.match(r"(fedmm\.[\w.]+?)\.x[_\u01c1]", name)
        if m and state != "not checked" and (only is None or name in only):
            counts[m.group(1)][state if state in ("killed", "survived") else "other"] += 1
    rows = ["| module | mutants | killed | survived | other | score |", "|---|---|---|---|---|---|"]
    for module, c in sorted(counts.items()):
        n = sum(c.values())
        rows.append(f"| `{module}` | {n} | {c['killed']} | {c['survived']} | {c['other']} | {c['killed'] / n:.0%} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if (
        not argv
        or argv[0] not in ("run", "test", "setup", "bench", "lock", "lint", "mutate")
        or (argv[0] == "bench" and len(argv) < 2)
    ):
        print("\n".join(__doc__.strip().splitlines()[:3]))
        return 2
    ensure_env()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if argv[0] == "setup":
        return 0
    if argv[0] == "lock":
        return lock(argv[1:])
    if argv[0] == "mutate":
        return mutate(argv[1:], env)
    if argv[0] == "lint":
        ruff = str(BIN / "ruff")
        return subprocess.call([ruff, "check", "."], cwd=ROOT) or subprocess.call(
            [ruff, "format", "--check", "."], cwd=ROOT
        )
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
