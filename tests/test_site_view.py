"""Every site's view: client-side evaluation on each site's own held-out data, and personalization (finetune,
fedper, fedbn, ditto) with the personal tensors kept in the site's state."""

import numpy as np
import pytest
import torch

from fedmm.client.personal import HEAD_KEYS, personal_keys
from fedmm.client.state import ClientState
from fedmm.data.partition import holdout_split
from fedmm.errors import FedmmError
from fedmm.metrics import site_summary

from conftest import fedmm, metrics, same_globals, same_site_figures


def test_site_summary_weights_by_examples_and_reports_the_worst_site():
    sites = {
        "0": {"num_examples": 10, "accuracy": 0.9, "loss": 0.2},
        "1": {"num_examples": 30, "accuracy": 0.5, "loss": 1.0},
        "2": {"num_examples": 60, "accuracy": 0.7, "loss": 0.6},
        "3": {"num_examples": 0},  # scored nothing: left out
    }
    out = site_summary(sites)
    assert out["accuracy_mean"] == pytest.approx((10 * 0.9 + 30 * 0.5 + 60 * 0.7) / 100)  # 0.66, unweighted: 0.7
    assert out["accuracy_min"] == 0.5
    assert out["accuracy_std"] == pytest.approx(np.std([0.9, 0.5, 0.7]))  # across sites, each once
    assert set(out) == {"accuracy_mean", "accuracy_min", "accuracy_std"}  # losses are not summarised


def test_holdout_split_is_deterministic_disjoint_and_sized():
    train, test = holdout_split(25, 0.1, seed=7, client=3)
    assert len(test) == 2 and len(train) == 23  # round(2.5) = 2 (banker's rounding of numpy/python)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(25))
    again = holdout_split(25, 0.1, seed=7, client=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again))
    assert not np.array_equal(test, holdout_split(25, 0.1, seed=7, client=4)[1])  # each client its own draw
    assert len(holdout_split(5, 0.01, 0, 0)[1]) == 1  # a positive fraction holds out at least one example
    assert len(holdout_split(2, 0.9, 0, 0)[1]) == 1  # ... and never all of them
    assert len(holdout_split(1, 0.5, 0, 0)[1]) == 0 and len(holdout_split(9, 0.0, 0, 0)[1]) == 0


def test_client_state_keeps_kinds_apart_and_reads_through_a_round(tmp_path):
    for root in (tmp_path, None):
        state = ClientState(root)
        state.save("personal", 0, 2, {"w": np.full(1, 2.0, np.float32)})
        state.save("residual", 0, 3, {"r": np.full(1, 3.0, np.float32)})
        assert state.load("personal", 0, 2) is None  # a rerun of round 2 starts from what came before it
        assert state.load("personal", 0, 2, through=True)["w"][0] == 2  # round 2's evaluation sees round 2's
        assert state.load("personal", 0, 5)["w"][0] == 2 and state.load("residual", 0, 4)["r"][0] == 3
        assert state.load("personal", 1, 5) is None


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(2, 2)
        self.norm = torch.nn.LayerNorm(2)
        self.classifier = torch.nn.Linear(2, 2)


def test_personal_keys_pick_the_head_or_the_norms_and_refuse_all_or_nothing():
    class Cfg:
        def __init__(self, name, local_keys=""):
            self.name, self.local_keys = name, local_keys

    model = _Net()
    keys = [k for k, _ in model.named_parameters()]
    assert personal_keys(Cfg("fedper"), model, keys) == ("classifier.weight", "classifier.bias")
    assert personal_keys(Cfg("fedbn"), model, keys) == ("norm.weight", "norm.bias")
    assert personal_keys(Cfg("fedper", r"^body\."), model, keys) == ("body.weight", "body.bias")
    assert personal_keys(Cfg("ditto"), model, keys) == () == personal_keys(Cfg("none"), model, keys)
    with pytest.raises(FedmmError, match="matches none"):
        personal_keys(Cfg("fedper", "nothing_here"), model, keys)
    with pytest.raises(FedmmError, match=r"trained tensors \(a.weight, b.weight\); give"):  # all of them, no "..."
        personal_keys(Cfg("fedper", "nothing_here"), model, ["a.weight", "b.weight"])
    with pytest.raises(FedmmError, match="nothing would be shared"):
        personal_keys(Cfg("fedper", "."), model, keys)
    with pytest.raises(FedmmError, match="not a regular expression"):
        personal_keys(Cfg("fedper", "("), model, keys)
    assert personal_keys(Cfg("fedper"), model, ["base_model.model.head.dense.weight", "x.weight"]) == (
        "base_model.model.head.dense.weight",
    )
    assert HEAD_KEYS  # the default is documented in personal.py


def test_fedbn_keeps_nested_norm_layers_and_their_statistics_and_nothing_named_like_them():
    """FedBN's rule is by module, at any depth: `body.1.norm.running_mean` stays local; a Linear whose own name
    contains "norm" does not, nor does a tensor of a module that merely sits under one named so."""
    model = torch.nn.Module()
    model.body = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Module())
    model.body[1].norm = torch.nn.BatchNorm1d(4)
    model.body[1].normalizer = torch.nn.Linear(4, 4)  # a name like a norm's, not a norm layer
    model.ln = torch.nn.LayerNorm(4)
    model.classifier = torch.nn.Linear(4, 2)
    keys = list(model.state_dict())
    local = personal_keys(type("Cfg", (), {"name": "fedbn", "local_keys": ""}), model, keys)
    assert local == (
        "body.1.norm.weight",
        "body.1.norm.bias",
        "body.1.norm.running_mean",
        "body.1.norm.running_var",
        "body.1.norm.num_batches_tracked",
        "ln.weight",
        "ln.bias",
    )


@pytest.mark.parametrize("mode", ["fedper", "fedbn"])
def test_the_server_scores_the_global_model_with_the_initial_local_tensors(tmp_path, tiny_args, mode):
    """Under fedper / fedbn the global model has no head (or norms) of its own: the server scores it with the
    local tensors' initial values, whatever a site's trained copy left in the model instance the embedded runtime
    shares; the local tensors never travel, and the running statistics that do are the strategy's stat_keys."""
    from fedmm.config import load_settings
    from fedmm.experiment import build_server
    from fedmm.modelops import get_params, set_params

    extra = ["model.norm=batchnorm"] if mode == "fedbn" else []
    fed = build_server(load_settings([*tiny_args, f"personalize={mode}", *extra, f"output_dir={tmp_path}"]))
    local = fed.server.instructions.local_keys
    assert local and not set(local) & set(fed.params)
    initial = get_params(fed.model, local)
    before = fed.server.evaluate(fed.params)
    set_params(fed.model, {k: v + 1 for k, v in initial.items()})  # a site's own copy, left behind
    assert fed.server.evaluate(fed.params) == before
    assert all(np.array_equal(v, initial[k]) for k, v in get_params(fed.model, local).items())
    travelling = {k for k in fed.params if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert fed.server.strategy.ctx.stat_keys == travelling
    assert bool(travelling) == (mode == "fedper")  # fedbn keeps every norm layer, the image encoder's too, local


def test_batchnorm_statistics_are_the_strategys_stat_keys(tmp_path, tiny_args):
    """model.norm=batchnorm: the fusion layers' running statistics travel as stat_keys (averaged, never stepped by
    a server optimizer)."""
    from fedmm.config import load_settings
    from fedmm.experiment import build_server

    fed = build_server(load_settings([*tiny_args, "model.norm=batchnorm", f"output_dir={tmp_path}"]))
    stats = {k for k in fed.params if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert any(not k.startswith("image_encoder.") for k in stats)  # the fusion layers' own BatchNorm
    assert fed.server.strategy.ctx.stat_keys == stats


def test_client_eval_records_every_site_and_fedper_helps_the_worst_site(tmp_path, tiny_args):
    # the acceptance run, with FedPer's heads kept at the sites at Dirichlet alpha 0.1
    args = tiny_args + ["num_clients=4", "rounds=3", "client_eval=final", "partition.alpha=0.1", "progress=false"]
    out = fedmm("run", *args, "personalize=fedper", f"output_dir={tmp_path / 'fedper'}")
    last = metrics(tmp_path / "fedper")[-1]
    sites = last["client_eval"]
    assert sorted(sites) == ["0", "1", "2", "3"]
    n = np.array([s["num_examples"] for s in sites.values()], dtype=float)
    acc = np.array([s["accuracy"] for s in sites.values()])
    assert last["client_eval_accuracy_mean"] == pytest.approx((n * acc).sum() / n.sum())
    assert last["client_eval_accuracy_min"] == acc.min()
    assert last["client_eval_accuracy_std"] == pytest.approx(acc.std())
    # the heads never travelled: the global model has none of them, each site kept its own
    from safetensors.numpy import load_file

    assert not any(k.startswith("classifier.") for k in load_file(tmp_path / "fedper" / "global.safetensors"))
    assert len(list((tmp_path / "fedper" / "client_state").glob("client_*/personal-r3.safetensors"))) == 4
    # at alpha 0.1 each site sees two or three classes: its own head beats the shared model at the worst site
    assert last["client_eval_personal_accuracy_min"] > last["client_eval_accuracy_min"] + 0.2
    assert (
        "sites (4, own test data)" in out.stdout
        and "Per-site evaluation" in (tmp_path / "fedper" / "report.md").read_text()
    )
    assert metrics(tmp_path / "fedper")[0].get("client_eval") is None  # final: only after the last round


def test_personal_state_resumes_exactly_and_finetune_reports_before_and_after(tmp_path, tiny_args, caplog):
    import fedmm as api

    # FedPer with 2 of 3 clients a round: after the resume, client 1 (its own head on disk) trains before client 2
    # (never sampled: the initial head), in the one model the embedded runtime's clients share
    args = tiny_args + ["num_clients=3", "clients_per_round=2", "client_eval=every", "personalize=fedper"]
    straight = api.run(args + ["rounds=2", f"output_dir={tmp_path / 'straight'}"])
    api.run(args + ["rounds=1", f"output_dir={tmp_path / 'split'}"])
    split = api.run(["rounds=2", f"resume={tmp_path / 'split'}"])
    same_globals(tmp_path / "straight", tmp_path / "split", atol=0)
    assert [bool(r.get("client_eval")) for r in straight.history] == [True, True]  # every: with each evaluation
    assert [r["clients"] for r in straight.history] == [[0, 1], [1, 2]]
    same_site_figures(straight.final, split.final, atol=0)  # the personal models, read back from the site's state
    assert "personal_accuracy" in straight.final["client_eval"]["0"]

    with caplog.at_level("INFO", logger="fedmm"):
        ft = api.run(tiny_args + ["num_clients=2", "rounds=1", "personalize=finetune", f"output_dir={tmp_path / 'ft'}"])
    site = ft.final["client_eval"]["0"]
    assert site["personal_loss"] < site["loss"]  # an epoch on its own data lowers its own test loss
    assert "task synthetic" in caplog.text and "nothing to do" not in caplog.text  # one round of one: to do


def test_bad_site_settings_are_one_line_errors(tiny_args):
    from fedmm.config import load_settings
    from fedmm.experiment.assemble import assemble

    for extra, message in (
        (["client_eval=sometimes"], "client_eval must be one of none, final, every"),
        (["personalize.name=solo"], "unknown personalize 'solo'"),
    ):
        with pytest.raises(FedmmError, match=message):
            load_settings(tiny_args + extra)
    with pytest.raises(FedmmError, match="matches none of the model's trained tensors"):
        assemble(load_settings(tiny_args + ["personalize=fedper", "personalize.local_keys=nothing"]), "server")
