"""select_best and early_stop: the best round on the validation split is kept, a run that stopped improving ends
with one line, and a resumed run selects and stops exactly as an uninterrupted one."""

import json

import numpy as np
import pytest

from fedmm import cli
from fedmm.errors import FedmmError
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.selection import Selection, improves, resolve_mode
from fedmm.fl.server import Server, ServerConfig
from fedmm.fl.strategy import STRATEGIES
from fedmm.fl.update import Update
from fedmm.params import load_params
from fedmm.rundir import RunDir

from conftest import TINY, fedmm, metrics


def test_the_rules_by_hand():
    assert resolve_mode("loss", "auto") == "min" and resolve_mode("accuracy", "auto") == "max"
    assert resolve_mode("loss", "max") == "max"
    assert improves(0.5, None, "max", 0.1) and not improves(float("nan"), None, "max", 0.0)
    assert improves(0.61, 0.5, "max", 0.1) and not improves(0.6, 0.5, "max", 0.1)  # by more than min_delta
    assert improves(0.39, 0.5, "min", 0.1) and not improves(0.4, 0.5, "min", 0.1)
    assert not improves(0.5, 0.5, "max", 0.0) and not improves(0.5, 0.5, "min", 0.0)  # a tie keeps the earlier
    s = Selection("accuracy", "max", patience=3)
    seen = [s.update(r, {"accuracy": v}) for r, v in enumerate([0.2, 0.5, 0.4, 0.5, 0.6, 0.3], 1)]
    assert seen == [True, True, False, False, True, False] and (s.best_round, s.best, s.since) == (5, 0.6, 1)
    assert not s.update(7, {"accuracy": float("nan")}) and not s.exhausted() and not s.update(8, {}) and s.exhausted()
    t = Selection("accuracy", "max", patience=3)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert (t.best_round, t.best, t.since) == (5, 0.6, 3)


G = {"w": np.zeros(2, np.float32)}
PEAK = 3.0  # the validation figure peaks when w reaches 3 (round 3), then falls as clients push w on


def _server(patience=0, rounds=8):
    entry = STRATEGIES.get("fedavg")
    cfg = ServerConfig(num_clients=2, per_round=2, min_clients=1, rounds=rounds, seed=0)
    ins = FitInstructions(round=0, seed=0, lr=0.1, local_epochs=1, batch_size=8, weight_decay=0.0)
    return Server(
        entry.factory(entry.config_cls()),
        cfg,
        evaluate=lambda p: {"loss": float(p["w"][0])},
        instructions=ins,
        selection=Selection("accuracy", "max", patience=patience),
        evaluate_val=lambda p: {"accuracy": -abs(float(p["w"][0]) - PEAK)},
    )


def fit_clients(rnd, ids, payload, instructions):  # every client moves w by 1 each round
    from fedmm.params import params_from_bytes

    w = params_from_bytes(payload)["w"]
    return {c: Update(c, {"w": w + 1.0}, 10).to_bytes() for c in ids}


def test_the_best_round_is_kept_though_the_last_is_worse(tmp_path):
    rd = RunDir(tmp_path / "run").create()
    final = _server().run(rd, dict(G), 1, fit_clients)
    records = rd.read_metrics()
    assert [r["best_round"] for r in records] == [1, 2, 3, 3, 3, 3, 3, 3] and "early_stop" not in records[-1]
    assert records[2]["val_accuracy"] == 0.0 and records[-1]["val_accuracy"] == -5.0
    np.testing.assert_array_equal(load_params(tmp_path / "run" / "best.safetensors")["w"], [3.0, 3.0])
    np.testing.assert_array_equal(final["w"], [8.0, 8.0])  # global.safetensors stays the last round's


def test_early_stop_ends_the_run_and_a_resume_stops_exactly_where_an_uninterrupted_run_does(tmp_path, capsys):
    whole = RunDir(tmp_path / "whole").create()
    _server(patience=2).run(whole, dict(G), 1, fit_clients)
    records = whole.read_metrics()
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5]  # rounds 4 and 5 did not improve on round 3
    assert records[-1]["early_stop"].startswith("early stop: val_accuracy did not improve by more than 0 in 2 ")
    assert "the best is round 3" in records[-1]["early_stop"]

    cut = RunDir(tmp_path / "cut").create()  # killed after round 4, resumed from its checkpoint
    server = _server(patience=2)
    server.cfg.rounds = 4
    server.run(cut, dict(G), 1, fit_clients)
    rnd, params, state, _ = cut.latest_checkpoint()
    resumed = _server(patience=2)
    resumed.load_state_dict(state)
    resumed.run(cut, params, rnd + 1, fit_clients)
    assert [json.dumps({k: v for k, v in r.items() if "seconds" not in k}) for r in cut.read_metrics()] == [
        json.dumps({k: v for k, v in r.items() if "seconds" not in k}) for r in records
    ]
    assert (tmp_path / "cut" / "best.safetensors").read_bytes() == (
        tmp_path / "whole" / "best.safetensors"
    ).read_bytes()
    again = _server(patience=2)  # resuming a run that stopped early trains nothing more
    again.load_state_dict(whole.latest_checkpoint()[2])
    capsys.readouterr()
    again.run(whole, whole.latest_checkpoint()[1], 6, fit_clients)
    assert len(whole.read_metrics()) == 5
    assert capsys.readouterr().out.strip() == records[-1]["early_stop"]  # and says why


def test_select_best_and_fedmm_evaluate_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    fedmm(
        "run",
        *TINY,
        "rounds=4",
        "num_clients=2",
        "keep_checkpoints=0",
        "progress=false",
        "select_best=main",
        "early_stop.patience=3",
        f"output_dir={run}",
    )
    records = metrics(run)
    best = records[-1]["best_round"]
    values = [r["val_accuracy"] for r in records]
    assert values[best - 1] == max(values) and best == values.index(max(values)) + 1  # the first of the best
    assert (run / "best.safetensors").read_bytes() == (
        run / "checkpoints" / f"round_{best:04d}" / "global.safetensors"
    ).read_bytes()
    out = fedmm("evaluate", str(run))
    assert "global.safetensors (round 4)" in out.stdout
    saved = json.loads((run / "evaluation.json").read_text())
    # the same model on the same test split: exactly the figures the server recorded
    assert saved["eval_loss"] == records[-1]["eval_loss"] and saved["eval_accuracy"] == records[-1]["eval_accuracy"]
    assert cli.main(["evaluate", str(run), "--checkpoint", "2"]) == 0  # in-process from here on: the same CLI
    assert json.loads((run / "evaluation.json").read_text())["eval_loss"] == records[1]["eval_loss"]
    assert cli.main(["evaluate", str(run), "--checkpoint", "best", "task.num_test=40"]) == 0
    other = json.loads((run / "evaluation.json").read_text())
    assert other["round"] == best and other["examples"] == 40 and other["overrides"] == ["task.num_test=40"]
    for args, words in (
        (["evaluate", str(run), "rounds=9"], "'rounds=9' cannot change when evaluating: the model is the run's"),
        (["evaluate", str(run), "--checkpoint", "12"], "keeps no checkpoint of round 12 (kept: 1, 2, 3, 4"),
        (["evaluate", str(run), "--checkpoint", "latest"], "--checkpoint takes best, last or a round number"),
        (["run", *TINY, "select_best=macro_f1", f"output_dir={tmp_path / 'x'}"], "task synthetic reports accuracy"),
    ):
        capsys.readouterr()
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_refusals():
    from fedmm.config import load_settings

    for override, words in (
        ("select_mode=up", "select_mode must be one of auto, max, min"),
        ("early_stop.patience=-1", "early_stop.patience=-1 is out of range"),
    ):
        with pytest.raises(FedmmError, match=words):
            load_settings([*TINY, "select_best=main", override])
    with pytest.raises(FedmmError, match="early_stop.patience needs select_best"):
        load_settings([*TINY, "early_stop.patience=2"])
