"""`fedmm evaluate RUN`: score one of a run's global models on the run's test split, or on other data.

The run's own config.yaml builds the task, the backend and the model (from the run's seed, as the server built it:
the tensors that never travel keep the values the server evaluated with); the checkpoint's tensors go on top, and
`server_metrics` scores it with the run's metrics (thresholds tuned on the validation split with
`task.tune_thresholds`, as in training). Task options given as overrides point it at other data of the same task
(another MM-IMDb folder, a table file, VQA v2 files); nothing of the run is changed but evaluation.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmm.config import Settings
from fedmm.errors import FedmmError
from fedmm.experiment.assemble import assemble
from fedmm.experiment.server import server_metrics
from fedmm.modelops import set_params
from fedmm.params import Params, atomic_write_bytes, load_params
from fedmm.rundir import RunDir

# What an evaluation may change: the data it scores (task options) and how it computes, never the model.
EVALUATION_KEYS = ("task", "eval_batch_size", "max_eval_samples", "device", "precision", "threads", "progress")


def evaluation_settings(run_dir: Path, overrides: list[str]) -> Settings:
    """The run's settings with `overrides` of the EVALUATION_KEYS applied (one-line error for any other)."""
    from fedmm.config.load import saved_config, validate
    from fedmm.registry import load_plugins

    if any(o.partition("=")[0] == "task" for o in overrides):
        raise FedmmError("an evaluation keeps the run's task; give task.* options for other data of that task")
    cfg = saved_config(
        run_dir,
        overrides,
        EVALUATION_KEYS,
        "evaluate",
        f"the model is the run's; give task.* options for other data of the same task, or "
        f"{', '.join(EVALUATION_KEYS[1:])}",
    )
    cfg.output_dir, cfg.resume = None, None
    load_plugins(cfg.get("plugins"))
    return validate(cfg)


def checkpoint_params(rd: RunDir, which: str) -> tuple[Params, str, Any]:
    """(params, file, round) of `which`: best (best.safetensors), last (global.safetensors) or a round number
    (its checkpoint, checksums verified)."""
    records = rd.read_metrics() if rd.metrics_path.exists() else []
    if which == "best":
        best = next((r["best_round"] for r in reversed(records) if r.get("best_round")), None)
        if best is None or not (rd.path / "best.safetensors").is_file():
            raise FedmmError(f"{rd.path} has no best.safetensors; the run needs select_best (use --checkpoint last)")
        return load_params(rd.path / "best.safetensors"), "best.safetensors", best
    if which == "last":
        if not (rd.path / "global.safetensors").is_file():
            raise FedmmError(f"{rd.path} has no global.safetensors yet (no round completed)")
        return (
            load_params(rd.path / "global.safetensors"),
            "global.safetensors",
            records[-1]["round"] if records else None,
        )
    if not which.isdigit():
        raise FedmmError(f"--checkpoint takes best, last or a round number (got '{which}')")
    folder = rd.ckpt_root / f"round_{int(which):04d}"
    if folder not in rd.checkpoints():
        kept = ", ".join(p.name.split("_")[1].lstrip("0") for p in rd.checkpoints()) or "none"
        raise FedmmError(f"{rd.path} keeps no checkpoint of round {which} (kept: {kept}; keep_checkpoints=0 keeps all)")
    try:
        rnd, params, _, _ = rd.load_checkpoint(folder)
    except (ValueError, KeyError) as e:
        raise FedmmError(f"checkpoint {folder.name} is damaged ({e}); choose another") from None
    return params, f"checkpoints/{folder.name}/global.safetensors", rnd


def evaluate_run(run_dir: str | Path, overrides: list[str], checkpoint: str = "last") -> dict[str, Any]:
    """Score `checkpoint` of the run on its task's test split (after `overrides`); writes and returns
    evaluation.json's content."""
    rd = RunDir(Path(run_dir).expanduser())
    settings = evaluation_settings(rd.path, overrides)
    params, source, rnd = checkpoint_params(rd, checkpoint)
    parts = assemble(settings, "centralized")  # the task's test split, the backend, the model from the run's seed
    shapes = {k: tuple(v.shape) for k, v in parts.model.state_dict().items()}
    wrong = sorted(k for k, v in params.items() if k not in shapes or shapes[k] != tuple(v.shape))
    if wrong:
        raise FedmmError(
            f"{source} does not fit the model these settings build ({wrong[0]}): the evaluation data has other "
            f"labels than the run's; give task.labels in the run's order"
        )
    set_params(parts.model, params)
    data = parts.data
    figures = server_metrics(parts.model, parts.backend, data, data.test, settings.eval_batch_size)
    out = {
        "run": str(rd.path),
        "checkpoint": source,
        "round": rnd,
        "overrides": list(overrides),
        "examples": len(data.test),
        **{f"eval_{k}": float(v) for k, v in figures.items()},
    }
    atomic_write_bytes(rd.path / "evaluation.json", (json.dumps(out, indent=2) + "\n").encode())
    return out
