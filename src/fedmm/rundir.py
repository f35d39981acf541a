"""One run, one directory. Layout:

    config.yaml          the resolved configuration
    metrics.jsonl        one JSON object per round (federated) or epoch (centralized)
    partition.json       per client: examples, label counts, modalities
    global.safetensors   the latest global trainable parameters (written atomically)
    checkpoints/round_0003/{global.safetensors, strategy.safetensors, state.json}
    report.md, metrics.png
    metrics.set-aside.jsonl  records of rounds that a resume recomputed (never deleted)
    .fedmm-run, .lock    fedmm's marker (this folder is a run fedmm made) and the one-writer lock

What is guaranteed:
- One writer: `run` and `resume` hold an exclusive lock on the folder for their whole life; a second process gets
  one line naming the holder's pid and touches nothing.
- A crash at any moment leaves a consistent directory: files are replaced atomically, each metrics record is
  fsynced, and a checkpoint folder appears only once complete. Each checkpoint records the sha256 of its files; a
  damaged or incomplete newest checkpoint makes resume fall back to the newest intact one, saying so.
- A run's identity is fixed: the settings that define the experiment are stored in every checkpoint, and a resume
  whose settings differ is refused with the keys named.
- Nothing is deleted that fedmm did not write: a new run refuses a non-empty folder without fedmm's marker, a torn
  last metrics line is dropped with a warning, a damaged earlier line is an error naming it, and the records of
  rounds a resume recomputes are set aside, not destroyed.
"""

from __future__ import annotations

import hashlib
import json
import math
import logging
import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np

from filelock import FileLock, Timeout

from fedmm.console import say
from fedmm.errors import FedmmError
from fedmm.params import Params, atomic_write_bytes, params_from_bytes, params_to_bytes, save_params


log = logging.getLogger(__name__)
MARKER = ".fedmm-run"
LOCK_ENV = "FEDMM_RUN_LOCKED"  # the run directory this process (or its parent) holds the lock of
_HELD: list[FileLock] = []  # locks held until the process exits
CURRENT: list[Path] = []  # the run directories this process opened, newest last (where error.txt goes)


def flatten_state(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split a nested state dict into its numpy arrays (keyed 'a/b/c') and a JSON-able remainder."""
    arrays: dict[str, np.ndarray] = {}
    rest: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            arrays[prefix + k] = v
        elif isinstance(v, dict):
            a, r = flatten_state(v, f"{prefix}{k}/")
            arrays.update(a)
            rest[k] = r
        else:
            rest[k] = v
    return arrays, rest


def unflatten_state(arrays: dict[str, np.ndarray], rest: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(rest))
    for key, v in arrays.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.ckpt_root = self.path / "checkpoints"

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MARKER).touch()
        return self

    def write_text(self, name: str, text: str) -> None:
        atomic_write_bytes(self.path / name, text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    # -- metrics ------------------------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """One record as one line of strict JSON: a non-finite number (whatever a client or strategy reported)
        is written as null, never as NaN or Infinity, which JSON does not have."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records. A torn last line (a crash while writing it) is dropped with a warning; a damaged line before
        it is an error that names the line (nothing is guessed, nothing deleted)."""
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(errors="replace").splitlines()
        out = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                step = record.get("round", record.get("epoch"))
            except ValueError:
                if i == len(lines) - 1:
                    log.warning(
                        "%s: its last line is cut short (a crash while writing it); that record is ignored",
                        self.metrics_path,
                    )
                    break
                raise FedmmError(
                    f"{self.metrics_path} line {i + 1} is damaged ({line[:40]!r}); repair or remove "
                    f"that line, then try again"
                ) from None
            if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise FedmmError(
                    f"{self.metrics_path} line {i + 1} has no round (or epoch) number >= 1 (got {str(step)[:20]}); "
                    f"repair or remove that line, then try again"
                )
            out.append(record)
        return out

    def set_aside_metrics(self, key: str, last: int) -> None:
        """Keep the records with record[key] <= last; the later ones (rounds a resume recomputes) are appended to
        metrics.set-aside.jsonl, never destroyed."""
        records = self.read_metrics()
        kept = [r for r in records if r.get(key, 0) <= last]
        later = [r for r in records if r.get(key, 0) > last]
        if later:
            with open(self.path / "metrics.set-aside.jsonl", "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in later))
                f.flush()
                os.fsync(f.fileno())
        if self.metrics_path.exists():  # also drops a torn last line for good (after the warning)
            self.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    # -- parameters and checkpoints -----------------------------------------------------------------------------
    def save_global(self, params: Params) -> None:
        save_params(self.path / "global.safetensors", params)

    def save_best(self, params: Params) -> None:
        """select_best: the best round's global parameters (written atomically, before that round's record)."""
        save_params(self.path / "best.safetensors", params)

    def save_checkpoint(
        self,
        rnd: int,
        params: Params,
        strategy_state: dict[str, Any],
        keep: int = 0,
        identity: Optional[dict[str, Any]] = None,
    ) -> None:
        final = self.ckpt_root / f"round_{rnd:04d}"
        tmp = self.ckpt_root / f".round_{rnd:04d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = params_to_bytes(params)
        arrays, rest = flatten_state(strategy_state)
        state_bytes = params_to_bytes(arrays)
        atomic_write_bytes(tmp / "global.safetensors", weights)
        atomic_write_bytes(tmp / "strategy.safetensors", state_bytes)
        meta = {
            "round": rnd,
            "strategy": rest,
            "identity": identity or {},
            "sha256": {"global.safetensors": _sha(weights), "strategy.safetensors": _sha(state_bytes)},
        }
        atomic_write_bytes(tmp / "state.json", json.dumps(meta, indent=2).encode())
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self.save_global(params)
        if keep > 0:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """The checkpoint folders fedmm wrote (round_NNNN), oldest first; anything else in checkpoints/ (a copy
        named round_0006.bak, round_x, a file) is left alone, with one line saying so."""
        if not self.ckpt_root.exists():
            return []
        if not self.ckpt_root.is_dir():
            raise FedmmError(f"{self.ckpt_root} is not a folder; move it away (fedmm keeps its checkpoints there)")
        out = []
        for p in sorted(self.ckpt_root.iterdir()):
            if CHECKPOINT.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                out.append(p)
            elif not p.name.startswith("."):  # .round_NNNN.tmp: a checkpoint being written
                say(f"{p} is not a checkpoint fedmm wrote; ignored")
        return out

    def load_checkpoint(self, folder: Path) -> tuple[int, Params, dict[str, Any], dict[str, Any]]:
        """(round, params, strategy state, identity) of one checkpoint, verified; ValueError saying what is wrong."""
        try:
            meta = json.loads((folder / "state.json").read_text())
            blobs = {name: (folder / name).read_bytes() for name in CHECKPOINT_FILES}
        except (OSError, ValueError) as e:
            raise ValueError(f"{type(e).__name__}: {str(e)[:80]}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
            raise ValueError("state.json holds no checksums (every checkpoint fedmm writes has them)")
        for name in CHECKPOINT_FILES:
            if _sha(blobs[name]) != meta["sha256"].get(name):
                raise ValueError(f"{name} does not match its checksum")
        if meta.get("round") != int(folder.name.split("_")[1]) or not isinstance(meta.get("strategy"), dict):
            raise ValueError("state.json does not describe this checkpoint")
        try:
            params, arrays = (
                params_from_bytes(blobs["global.safetensors"]),
                params_from_bytes(blobs["strategy.safetensors"]),
            )
        except Exception as e:  # noqa: BLE001 - a damaged file, whatever safetensors says about it
            raise ValueError(f"unreadable safetensors ({str(e)[:80]})") from None
        return int(meta["round"]), params, unflatten_state(arrays, meta["strategy"]), meta.get("identity", {})

    def latest_checkpoint(
        self, up_to: Optional[int] = None
    ) -> Optional[tuple[int, Params, dict[str, Any], dict[str, Any]]]:
        """(round, params, strategy state, identity) of the newest intact checkpoint (of round `up_to` at most); a
        damaged newer one is skipped with one line saying so (and left where it is)."""
        for folder in reversed(self.checkpoints()):  # named round_NNNN: the number parses
            if up_to is not None and int(folder.name.split("_")[1]) > up_to:
                say(f"checkpoint {folder.name} has no record in metrics.jsonl; resuming from an earlier one")
                continue
            try:
                return self.load_checkpoint(folder)
            except (ValueError, KeyError) as e:
                say(f"checkpoint {folder.name} is damaged ({e}); falling back to the one before")
        return None

    # -- one writer ---------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the folder's lock until this process exits; another holder is a one-line error naming its pid.
        Processes this one starts for the same run (a simulator's server) inherit the hold."""
        if os.environ.get(LOCK_ENV) == str(self.path.resolve()):
            return
        lock = FileLock(str(self.path / ".lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            pid = (self.path / ".lock.pid").read_text().strip() if (self.path / ".lock.pid").exists() else "?"
            raise FedmmError(
                f"{self.path} is in use by another fedmm process (pid {pid}); wait for it to finish, "
                f"or choose another output_dir"
            ) from None
        (self.path / ".lock.pid").write_text(f"{os.getpid()}\n")
        _HELD.append(lock)
        os.environ[LOCK_ENV] = str(self.path.resolve())


CHECKPOINT = re.compile(r"round_\d{4,}")  # what save_checkpoint names its folders
CHECKPOINT_FILES = ("global.safetensors", "strategy.safetensors")


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (dicts and lists walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_run_dir(resume: Optional[str], output_dir: Optional[str], kind: str, config_yaml: str) -> RunDir:
    """The run directory of a new run (`output_dir`, default runs/<timestamp>[-<kind>]) with its config.yaml
    written, or the one `resume` continues, locked for this process. A folder that already holds a run, or that
    holds anything fedmm did not write, is never used by a new run."""
    if resume:
        rd = RunDir(resume)
        rd.lock()
        CURRENT.append(rd.path)
        return rd
    if output_dir:
        path = Path(output_dir).expanduser()
    else:
        path = Path("runs") / (datetime.now().strftime("%Y%m%d-%H%M%S-%f") + ("" if kind == "run" else f"-{kind}"))
    check_output_dir(path)
    if (path / "metrics.jsonl").exists():
        raise FedmmError(f"{path} already holds a run; choose another output_dir, or continue it with resume={path}")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).exists():
        raise FedmmError(f"{path} is not empty and was not made by fedmm; choose a new or empty output_dir")
    try:
        rd = RunDir(path).create()
    except OSError as e:
        raise FedmmError(f"cannot create output_dir {path} ({e.strerror}); choose a folder you can write") from None
    rd.lock()
    CURRENT.append(rd.path)
    rd.write_text("config.yaml", config_yaml)
    return rd


def check_output_dir(path: Path) -> None:
    """A usable folder name: printable, each part a valid file name, not under a system folder, not a file."""
    text = str(path)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise FedmmError(f"output_dir {text!r} holds a control character; choose a plain folder name")
    if any(len(part.encode()) > 255 for part in path.parts):
        raise FedmmError("output_dir has a name longer than 255 bytes; choose a shorter folder name")
    resolved = path.expanduser().absolute()
    if any(resolved == Path(p) or Path(p) in resolved.parents for p in ("/proc", "/sys", "/dev")):
        raise FedmmError(f"output_dir {text} is under a system folder; choose a folder of your own")
    for p in (resolved, *resolved.parents):
        if p.exists() and not p.is_dir():
            raise FedmmError(f"output_dir {text}: {p} is a file, not a folder; choose another output_dir")
