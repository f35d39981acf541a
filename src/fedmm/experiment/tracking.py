"""Experiment tracking: each record's numbers per round (or epoch) to TensorBoard and/or MLflow, the configuration as
parameters, and the report, plot and config as artifacts once the run ends (`tracking=[tensorboard,mlflow]`).

metrics.jsonl stays the record of truth; trackers are views of it. The libraries are imported only when chosen
(MLflow takes a second to import). A resumed run continues the same MLflow run (its id is kept in the run
directory's `mlflow_run_id`) and the same TensorBoard folder, so its curves continue where they stopped.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from fedmm.config import Settings
from fedmm.config.load import flat
from fedmm.config.schema import TrackingConfig
from fedmm.console import say
from fedmm.errors import FedmmError

ARTIFACTS = ("report.md", "metrics.png", "config.yaml", "partition.json")
STEP_KEYS = ("round", "epoch")


def numbers(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The record's numeric values as flat `a/b` names (nested dicts such as per-client numbers included); the step
    key, booleans, strings, lists and None are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name not in STEP_KEYS:
            out[name] = float(value)
    return out


class TensorBoardTracker:
    """Scalars in `<run>/tensorboard/`, the configuration as TensorBoard hparams and as text."""

    def __init__(self, run_dir: Path, params: dict[str, str], config_yaml: str):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        for summary in hparams(params, {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + config_yaml + "\n```")

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def finish(self, run_dir: Path, status: str) -> None:
        report = run_dir / "report.md"
        if report.exists():
            self.writer.add_text("report", report.read_text())
        self.writer.close()


class MLflowTracker:
    """One MLflow run per fedmm run, through MlflowClient (no global state, so API users' own runs are untouched)."""

    def __init__(self, run_dir: Path, params: dict[str, str], cfg: TrackingConfig):
        import logging

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its own INFO lines (database set-up) are noise here
        uri = cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working directory
                artifacts = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(cfg.experiment, artifact_location=artifacts)
        id_file = run_dir / "mlflow_run_id"
        if id_file.exists():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            id_file.write_text(self.run_id + "\n")
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
                self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.uri = uri

    def log(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(name, value, now, step) for name, value in values.items() if math.isfinite(value)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def finish(self, run_dir: Path, status: str) -> None:
        for name in ARTIFACTS:
            if (run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, status=status)


def default_mlflow_uri(run_dir: Path) -> str:
    """An SQLite store shared by the runs beside this one (runs/mlflow.db for the default runs/<time>/)."""
    return "sqlite:///" + str((run_dir.parent / "mlflow.db").resolve())


@contextmanager
def tracked(settings: Settings, run_dir: Path) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A `log(record)` for the run's trackers (a no-op without any); on leaving, artifacts are logged and the
    tracker's run is closed as FINISHED, or FAILED / KILLED when the run stopped with an error or a signal."""
    from omegaconf import OmegaConf

    cfg = settings.typed("tracking", TrackingConfig)
    if not cfg.to:
        yield lambda record: None
        return
    run_dir = Path(run_dir)
    params = {k: str(v) for k, v in flat(OmegaConf.to_container(settings.cfg, resolve=True)).items()}
    trackers: list[Any] = []
    try:
        for name in cfg.to:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(run_dir, params, settings.to_yaml()))
            else:
                trackers.append(MLflowTracker(run_dir, params, cfg))
    except FedmmError:
        raise
    except Exception as e:  # noqa: BLE001 - a store that cannot be opened: one line, before any round runs
        raise FedmmError(f"tracking={name} could not start: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    failed: list[str] = []

    def log(record: dict[str, Any]) -> None:
        step = next(int(record[k]) for k in STEP_KEYS if k in record)
        values = numbers(record)
        for tracker in trackers:
            try:
                tracker.log(step, values)
            except Exception as e:  # noqa: BLE001 - metrics.jsonl holds the record; the run goes on
                if type(tracker).__name__ not in failed:
                    failed.append(type(tracker).__name__)
                    say(f"warning: {type(tracker).__name__} could not log round {step} ({e}); metrics.jsonl has it")

    status = "FAILED"
    try:
        yield log
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for tracker in trackers:
            try:
                tracker.finish(run_dir, status)
            except Exception as e:  # noqa: BLE001 - never hide the run's own outcome behind a tracker's
                say(f"warning: {type(tracker).__name__} could not finish ({e})")
        mlflow = [t for t in trackers if isinstance(t, MLflowTracker)]
        if mlflow and status == "FINISHED":
            say(f"tracked in MLflow: {mlflow[0].uri}, experiment '{cfg.experiment}', run {mlflow[0].run_id}")
