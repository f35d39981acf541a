"""Every strategy from the command line, and exact resume of the stateful ones."""

import json

import pytest
from safetensors.numpy import load_file

from conftest import TINY, fedmm, metrics, untrained
from fedmm.cli import main
from fedmm.fl.strategy import STRATEGIES
from test_cli import kill_and_resume

MISSING = ["num_clients=4", "modality.text_only=[1]", "modality.image_only=[2]"]


# Data where two rounds are enough to learn: 2 colours x 2 keywords (4 classes, chance 0.25), split evenly.
LEARNABLE = ["task.image_classes=2", "task.text_classes=2", "partition=iid", "lr=0.005"]
MARGIN = 0.12  # accuracy above the untrained model's (0.265 at seed 42); the weakest strategy measured +0.15


@pytest.mark.slow
def test_every_strategy_learns_in_two_rounds(tmp_path):
    # Krum and Multi-Krum need 5 clients per round (2f + 3), Bulyan 7 (4f + 3): run below with as many
    # q-FFL's step assumes SGD clients (its docstring): measured below with optimizer=sgd
    names = [n for n in STRATEGIES.names() if n not in ("bulyan", "krum", "multikrum", "qfedavg")]
    # One sweep: every strategy on the tiny fusion model with LoRA adapters on its text encoder and two clients
    # that miss a modality.
    args = [*TINY, *MISSING, *LEARNABLE, "model.lora_r=2", "rounds=2"]
    fedmm("run", "-m", *args, f"strategy={','.join(names)}", f"output_dir={tmp_path}/sw")
    base = untrained(args, tmp_path)
    runs = {}
    for name in names:
        records = [
            json.loads(l) for l in (tmp_path / "sw" / f"strategy-{name}" / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["round"] for r in records] == [1, 2], name
        assert all(r["num_clients"] == 4 for r in records), name
        if name == "fedadagrad":  # its default step is too small for two rounds: measured below with a larger one
            assert records[-1]["eval_loss"] < base["loss"], (name, records[-1], base)
        else:
            assert records[-1]["eval_loss"] < base["loss"] - 0.1, (name, records[-1], base)
            assert records[-1]["eval_accuracy"] > base["accuracy"] + MARGIN, (name, records[-1], base)
        runs[name] = records
    # Adagrad's v sums every squared change, so its first steps are server_lr * (1 - beta1) per coordinate, a tenth
    # of Adam's: with Flower's default server_lr (0.1) it learns like the others.
    assert main(["run", *args, "strategy=fedadagrad", "strategy.server_lr=0.1", f"output_dir={tmp_path}/adagrad"]) == 0
    assert metrics(tmp_path / "adagrad")[-1]["eval_accuracy"] > base["accuracy"] + MARGIN
    assert main(["run", *args, "strategy=qfedavg", "optimizer=sgd", "lr=0.1", f"output_dir={tmp_path}/qffl"]) == 0
    assert metrics(tmp_path / "qffl")[-1]["eval_accuracy"] > base["accuracy"] + MARGIN
    assert runs["scaffold"][0]["bytes_down"] > 1.9 * runs["fedavg"][0]["bytes_down"]  # c travels with the model
    assert runs["fedmap"][-1]["strategy_evals"] == 4 + 1  # n_trials_per_round + the student
    assert {"teacher_score", "student_score", "beta", "weights"} <= {k[9:] for k in runs["fedmap"][-1]}
    # FFA-LoRA sends only the B matrices: fewer bytes both ways than the same run sending A and B.
    assert runs["ffa_lora"][0]["bytes_up"] < runs["lora_exact"][0]["bytes_up"]
    assert runs["ffa_lora"][0]["bytes_down"] < runs["lora_exact"][0]["bytes_down"]
    assert not any(
        ".lora_A." in k for k in load_file(str(tmp_path / "sw" / "strategy-ffa_lora" / "global.safetensors"))
    )
    for name in ("krum", "multikrum"):
        assert main(["run", *args, "num_clients=5", f"strategy={name}", f"output_dir={tmp_path}/{name}"]) == 0
        assert metrics(tmp_path / name)[-1]["eval_accuracy"] > base["accuracy"] + MARGIN, name
    assert main(["run", *args, "num_clients=7", "strategy=bulyan", f"output_dir={tmp_path}/bulyan"]) == 0
    records = metrics(tmp_path / "bulyan")
    assert all(len(r["strategy_selected"]) == 7 - 2 for r in records)  # n - 2f picked by repeated Krum
    assert records[-1]["eval_accuracy"] > base["accuracy"] + MARGIN


@pytest.mark.slow
# FedMAP: a learned aggregator on the server; SCAFFOLD: server state (c) and each site's own (c_i, kept where the
# client runs, as FedDyn's linear term is). FedOpt's and FedDyn's server state round-trips in test_baselines.py.
@pytest.mark.parametrize("strategy", ["fedmap", "scaffold"])
def test_killed_stateful_strategy_resumes_exactly(tmp_path, strategy):
    kill_and_resume(tmp_path, [*TINY, *MISSING, "rounds=4", f"strategy={strategy}"])


def test_strategy_config_errors_are_one_line(tmp_path, capsys):
    # In-process (the command-line subprocess path is covered in test_cli): each error comes before any output.
    for args, expected in [
        (["strategy=fedmap", "strategy.input_dim=7"], "input_dim must be 10"),
        (["strategy=trimmed_mean", "strategy.beta=0.7"], "beta must be in [0, 0.5)"),
        (["strategy=fedprox", "strategy.mu=-1"], "mu must be >= 0"),
        (["strategy=fedadam", "strategy.mu=1"], "unknown option 'strategy.mu'"),
    ]:
        assert main(["run", *TINY, "rounds=1", f"output_dir={tmp_path}/x", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "x").exists()


def test_fedmap_scores_candidates_on_the_validation_split_with_the_server_model(tmp_path):
    import numpy as np

    from fedmm.config import load_settings
    from fedmm.experiment import build_server
    from fedmm.modelops import get_params

    exp = build_server(load_settings([*TINY, "strategy=fedmap", f"output_dir={tmp_path}/run"]))
    ctx = exp.server.strategy.ctx
    assert ctx.metric == "accuracy" and ctx.run_dir == tmp_path / "run"
    exp.backend.build_model = None  # candidates are evaluated in the server's one model, never a new one
    shifted = {k: v + 0.01 for k, v in exp.params.items()}
    scored = ctx.evaluate_val(shifted)
    loaded = get_params(exp.model, list(shifted))
    assert all(np.array_equal(loaded[k], shifted[k]) for k in shifted)
    assert scored == exp.backend.evaluate(exp.model, exp.data.val, exp.data.metrics)
    assert scored != exp.backend.evaluate(exp.model, exp.data.test, exp.data.metrics)
