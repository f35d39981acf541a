"""The Python API (fedmm.run, fedmm.centralized, fedmm.load_run): results as objects, quiet by default, errors as
FedmmError, and a strategy registered through the top-level registry used by name."""

import logging
from dataclasses import dataclass

import pytest

import fedmm
from conftest import TINY

ARGS = [a for a in TINY if not a.startswith(("task=", "model="))]


def test_run_returns_the_history_and_prints_nothing(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="fedmm"):
        result = fedmm.run(ARGS, task="synthetic", model="fusion_tiny", rounds=2, output_dir=str(tmp_path / "r"))
    assert capsys.readouterr().out == ""  # quiet by default ...
    assert any("done in" not in m and "round" in m for m in caplog.messages)  # ... but logged
    assert result.run_dir == tmp_path / "r" and [r["round"] for r in result.history] == [1, 2]
    assert result.metrics == {k: v for k, v in result.final.items() if k.startswith("eval_") and k != "eval_seconds"}
    assert set(result.metrics) == {"eval_loss", "eval_accuracy"} and result.config["rounds"] == 2
    again = fedmm.load_run(tmp_path / "r")
    assert again.history == result.history and again.config == result.config


def test_verbose_prints_what_the_command_line_prints(tmp_path, capsys):
    fedmm.run(ARGS, task="synthetic", model="fusion_tiny", rounds=1, verbose=True, output_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "model fusion: trainable" in out and " round " in out


def test_keyword_values_are_written_as_yaml_and_centralized_works(tmp_path):
    result = fedmm.centralized(
        [*ARGS, "task=synthetic", "model=fusion_tiny"],
        epochs=1,
        modality={"text_only": [], "image_only": []},
        output_dir=str(tmp_path),
    )
    assert [r["epoch"] for r in result.history] == [1] and "eval_accuracy" in result.metrics


def test_errors_are_one_line_fedmm_errors(tmp_path):
    with pytest.raises(fedmm.FedmmError, match="rounds=0 is out of range"):
        fedmm.run(task="synthetic", rounds=0)
    with pytest.raises(fedmm.FedmmError, match="not a fedmm run directory"):
        fedmm.load_run(tmp_path)


@dataclass
class HalfStepConfig:
    name: str = "half_step"


@pytest.fixture
def half_step_registered():
    yield
    fedmm.STRATEGIES._entries.pop("half_step", None)  # other tests list the strategies


def test_a_strategy_registered_through_the_top_level_registry_runs_by_name(tmp_path, half_step_registered):
    from fedmm.fl.strategy.fedavg import weighted_average

    @fedmm.STRATEGIES.register("half_step", HalfStepConfig)
    class HalfStep(fedmm.STRATEGIES.get("fedavg").factory):
        """FedAvg that moves only half way (a user's own strategy)."""

        def aggregate(self, rnd, global_params, updates):
            avg = weighted_average(global_params, ((u.params, float(u.num_examples)) for u in updates))
            return {
                k: (global_params[k] + (avg[k] - global_params[k]) / 2).astype(global_params[k].dtype)
                for k in global_params
            }

    result = fedmm.run(
        ARGS, task="synthetic", model="fusion_tiny", strategy="half_step", rounds=1, output_dir=str(tmp_path)
    )
    assert result.config["strategy"]["name"] == "half_step" and len(result.history) == 1
