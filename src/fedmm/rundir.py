"""One run, one directory. Layout:

    config.yaml          the resolved configuration
    metrics.jsonl        one JSON object per round (federated) or epoch (centralized)
    partition.json       per client: examples, label counts, modalities
    global.safetensors   the latest global trainable parameters (written atomically)
    checkpoints/round_0003/{global.safetensors, strategy.safetensors, state.json}
    report.md, metrics.png

Everything is written so that a crash at any moment leaves a consistent directory: files are replaced atomically and
a checkpoint folder appears only once complete.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fedmm.errors import FedmmError
from fedmm.params import Params, atomic_write_bytes, load_params, params_from_bytes, params_to_bytes, save_params


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
        return self

    def write_text(self, name: str, text: str) -> None:
        atomic_write_bytes(self.path / name, text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    # -- metrics ------------------------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                break
        return out

    def truncate_metrics(self, key: str, last: int) -> None:
        """Keep only the records with record[key] <= last (rounds recomputed after a resume are written again)."""
        kept = [r for r in self.read_metrics() if r.get(key, 0) <= last]
        self.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    # -- parameters and checkpoints -----------------------------------------------------------------------------
    def save_global(self, params: Params) -> None:
        save_params(self.path / "global.safetensors", params)

    def save_checkpoint(self, rnd: int, params: Params, strategy_state: dict[str, Any], keep: int = 0) -> None:
        final = self.ckpt_root / f"round_{rnd:04d}"
        tmp = self.ckpt_root / f".round_{rnd:04d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_params(tmp / "global.safetensors", params)
        arrays, rest = flatten_state(strategy_state)
        atomic_write_bytes(tmp / "strategy.safetensors", params_to_bytes(arrays))
        (tmp / "state.json").write_text(json.dumps({"round": rnd, "strategy": rest}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self.save_global(params)
        if keep > 0:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_root.exists():
            return []
        return sorted(p for p in self.ckpt_root.iterdir() if p.is_dir() and p.name.startswith("round_"))

    def latest_checkpoint(self) -> Optional[tuple[int, Params, dict[str, Any]]]:
        ckpts = self.checkpoints()
        if not ckpts:
            return None
        last = ckpts[-1]
        state = json.loads((last / "state.json").read_text())
        arrays = params_from_bytes((last / "strategy.safetensors").read_bytes())
        return state["round"], load_params(last / "global.safetensors"), unflatten_state(arrays, state["strategy"])


def open_run_dir(resume: Optional[str], output_dir: Optional[str], kind: str, config_yaml: str) -> RunDir:
    """The run directory of a new run (`output_dir`, default runs/<timestamp>[-<kind>]) with its config.yaml
    written, or the one `resume` continues. A folder that already holds a run is never reused by a new one."""
    if resume:
        return RunDir(resume)
    if output_dir:
        path = Path(output_dir).expanduser()
    else:
        path = Path("runs") / (datetime.now().strftime("%Y%m%d-%H%M%S-%f") + ("" if kind == "run" else f"-{kind}"))
    if (path / "metrics.jsonl").exists():
        raise FedmmError(f"{path} already holds a run; choose another output_dir, or continue it with resume={path}")
    rd = RunDir(path).create()
    rd.write_text("config.yaml", config_yaml)
    return rd
