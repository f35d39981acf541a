"""Experiment tracking with the real libraries: the per-round numbers read back from TensorBoard's event files and
from the MLflow store equal metrics.jsonl's, a resume continues the same MLflow run, and bad settings are one line."""

import pytest

import fedmm
from conftest import TINY, fedmm as cli, metrics
from fedmm.config.load import flat
from fedmm.experiment.tracking import numbers

ARGS = [*TINY, "rounds=2"]


def test_numbers_flatten_nested_values_and_drop_what_is_not_a_number():
    record = {
        "round": 3,
        "eval_loss": 0.5,
        "clients_replied": 2,
        "ok": True,
        "failures": [1],
        "strategy": None,
        "client_eval": {"0": {"num_examples": 10, "accuracy": 0.75}},
        "name": "x",
    }
    assert numbers(record) == {
        "eval_loss": 0.5,
        "clients_replied": 2.0,
        "client_eval/0/num_examples": 10.0,
        "client_eval/0/accuracy": 0.75,
    }
    assert flat({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


def _tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_and_mlflow_hold_every_rounds_numbers_and_a_resume_continues_them(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    run = tmp_path / "runs" / "r"
    fedmm.run(
        ARGS, tracking={"to": ["tensorboard", "mlflow"], "mlflow_uri": uri, "experiment": "t"}, output_dir=str(run)
    )
    fedmm.run(resume=str(run), rounds=3)
    records = metrics(run)
    assert [r["round"] for r in records] == [1, 2, 3]

    scalars = _tensorboard_scalars(run / "tensorboard")
    for key in ("eval_accuracy", "eval_loss", "train_loss", "bytes_up"):
        assert scalars[key] == pytest.approx({r["round"]: r[key] for r in records}, rel=1e-6), key

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1  # the resume continued the same MLflow run
    mrun = runs[0]
    assert mrun.info.run_id == (run / "mlflow_run_id").read_text().strip() and mrun.info.status == "FINISHED"
    for key in ("eval_accuracy", "eval_loss", "train_loss"):
        history = {m.step: m.value for m in client.get_metric_history(mrun.info.run_id, key)}
        assert history == pytest.approx({r["round"]: r[key] for r in records}, rel=1e-12), key
    assert mrun.data.params["strategy.name"] == "fedavg" and mrun.data.params["task.num_train"] == "600"
    artifacts = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"report.md", "metrics.png", "config.yaml"} <= artifacts
    assert (tmp_path / "store" / "mlartifacts").is_dir()  # beside the store, not in the working directory


def test_centralized_runs_are_tracked_per_epoch(tmp_path):
    result = fedmm.centralized(ARGS, epochs=2, tracking={"to": ["tensorboard"]}, output_dir=str(tmp_path / "c"))
    scalars = _tensorboard_scalars(tmp_path / "c" / "tensorboard")
    assert scalars["eval_accuracy"] == pytest.approx({r["epoch"]: r["eval_accuracy"] for r in result.history})


def test_the_default_mlflow_store_sits_beside_the_runs_and_the_shorthand_works_from_the_shell(tmp_path):
    proc = cli("run", *TINY, "rounds=1", "tracking=[mlflow]", f"output_dir={tmp_path / 'runs' / 'a'}")
    assert f"tracked in MLflow: sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" in proc.stdout
    assert (tmp_path / "runs" / "mlflow.db").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        ("tracking=[wandb]", "unknown tracker 'wandb' in tracking; choose from tensorboard, mlflow"),
        ("tracking.to=tensorboard", "tracking.to"),
    ],
)
def test_bad_tracking_settings_are_one_line(tmp_path, override, message):
    proc = cli("run", *TINY, override, f"output_dir={tmp_path / 'x'}", check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
