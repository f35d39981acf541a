"""fedmm from Python.

    import fedmm
    result = fedmm.run(task="synthetic", model="fusion_tiny", rounds=2)      # or fedmm.run(["rounds=2", ...])
    result.run_dir, result.history, result.final, result.metrics            # see `Result`
    again = fedmm.load_run(result.run_dir)
    base = fedmm.centralized(["task=synthetic", "model=fusion_tiny"], epochs=2)

`run` and `centralized` take the command line's `key=value` overrides as a list, keyword options, or both (a keyword
is `key=value` with the value in Hydra's grammar: lists, dicts, booleans and None as Hydra reads them; dotted keys go
in the list). They are quiet: what the command line prints goes to the `fedmm` logger (INFO), and `verbose=True`
prints it too. Errors are `fedmm.errors.FedmmError` with the command line's one-line message.

`run_federated(settings)` and `run_centralized(settings)` are what the `fedmm` command calls; they print and return
the last record.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from fedmm import console
from fedmm.config import Settings, load_settings  # noqa: F401  (part of the API)
from fedmm.console import say
from fedmm.errors import FedmmError
from fedmm.record import eval_summary, is_eval_metric
from fedmm.registry import RUNTIMES
from fedmm.rundir import RunDir


@dataclass
class Result:
    """A run as its folder holds it: `history` is metrics.jsonl (one record per round, or per epoch for a
    centralized run; `fedmm.record` says what each column means) and `config` its config.yaml."""

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        """The last record ({} before the first round completes)."""
        return self.history[-1] if self.history else {}

    @property
    def metrics(self) -> dict[str, float]:
        """The final evaluation: {"eval_accuracy": ..., "eval_loss": ...}."""
        return {k: v for k, v in self.final.items() if is_eval_metric(k)}


def load_run(path: Union[str, Path]) -> Result:
    """A finished (or interrupted) run directory as a `Result`."""
    from omegaconf import OmegaConf

    rd = RunDir(Path(path))
    if not (rd.path / "config.yaml").is_file():
        raise FedmmError(f"{rd.path} is not a fedmm run directory (it has no config.yaml)")
    config = OmegaConf.to_container(OmegaConf.load(rd.path / "config.yaml"), resolve=True)
    return Result(run_dir=rd.path, history=rd.read_metrics(), config=config)


def _value(v: Any) -> str:
    """A Python value in Hydra's override grammar: true, null, [1,2], {a:1,b:[]}; strings as they are."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return v if isinstance(v, str) else json.dumps(v)


def _overrides(overrides: Optional[list[str]], options: dict[str, Any]) -> list[str]:
    return [*(overrides or []), *(f"{k}={_value(v)}" for k, v in options.items())]


@contextmanager
def _output(verbose: bool) -> Iterator[None]:
    quiet = console.QUIET
    console.QUIET = quiet or not verbose
    try:
        yield
    finally:
        console.QUIET = quiet


def run(overrides: Optional[list[str]] = None, *, verbose: bool = False, **options: Any) -> Result:
    """A federated run, on the runtime the settings choose (as `fedmm run`)."""
    with _output(verbose):
        settings = load_settings(_overrides(overrides, options))
        result = RUNTIMES.get(settings.runtime.name).factory(settings.runtime).run(settings)
    return load_run(result.rundir.path)


def centralized(overrides: Optional[list[str]] = None, *, verbose: bool = False, **options: Any) -> Result:
    """The centralized baseline (as `fedmm centralized`)."""
    from fedmm.experiment.centralized import train_centralized

    with _output(verbose):
        rundir, _ = train_centralized(load_settings(_overrides(overrides, options)))
    return load_run(rundir.path)


def _summary(rundir: RunDir, final: dict[str, Any], seconds: float) -> None:
    say(f"done in {seconds:.1f}s: {eval_summary(final)}")
    plots = "metrics.png, sites.png" if (rundir.path / "sites.png").exists() else "metrics.png"
    say(f"outputs: {rundir.path}/ (metrics.jsonl, global.safetensors, report.md, {plots})")


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
