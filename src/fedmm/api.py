"""fedmm from Python: the functions the `fedmm` command runs.

    from fedmm.api import load_settings, run_federated
    final = run_federated(load_settings(["task=synthetic", "model=fusion_tiny", "rounds=2"]))

`run_federated` runs the experiment on the runtime its settings choose and returns the last round's record (see
`fedmm.record`); `run_centralized` trains the centralized baseline and returns the last epoch's.
"""
from __future__ import annotations

import time
from typing import Any

from fedmm.config import Settings, load_settings  # noqa: F401  (part of the API)
from fedmm.console import say
from fedmm.record import eval_summary
from fedmm.registry import RUNTIMES
from fedmm.rundir import RunDir


def _summary(rundir: RunDir, final: dict[str, Any], seconds: float) -> None:
    say(f"done in {seconds:.1f}s: {eval_summary(final)}")
    say(f"outputs: {rundir.path}/ (metrics.jsonl, global.safetensors, report.md, metrics.png)")


def run_federated(settings: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = RUNTIMES.get(settings.runtime.name).factory(settings.runtime).run(settings)
    _summary(result.rundir, result.final, time.perf_counter() - t0)
    return result.final


def run_centralized(settings: Settings) -> dict[str, Any]:
    """The same task, model and loop on the union of the clients' training data (see experiment.centralized)."""
    from fedmm.experiment.centralized import train_centralized

    t0 = time.perf_counter()
    rundir, final = train_centralized(settings)
    _summary(rundir, final, time.perf_counter() - t0)
    return final
