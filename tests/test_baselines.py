"""The baselines' rules by hand (FedNova, FedDyn) on rounds where FedAvg gives a different answer, without a model.
q-FFL is checked against Flower's QFedAvg in test_flower_reference.py."""

import numpy as np
import pytest

from fedmm.fl.strategy import STRATEGIES
from fedmm.fl.strategy.fednova import fednova_step, normalizing_factor
from fedmm.fl.update import Update


def make(name, **kw):
    entry = STRATEGIES.get(name)
    return entry.factory(entry.config_cls(**kw))


def test_fednova_normalising_factors_by_hand():
    assert normalizing_factor(3) == 3.0  # plain SGD / AdamW: the steps
    assert normalizing_factor(1, 0.9) == 1.0
    assert normalizing_factor(2, 0.9) == pytest.approx(1 + 1.9)  # the buffer's weights 1, then 1 + 0.9
    assert normalizing_factor(3, 0.9) == pytest.approx(1 + 1.9 + 2.71)


def test_fednova_divides_each_change_by_its_steps_and_rescales_by_the_effective_steps():
    """Client 0: 1 example, 1 step, moved 0 -> 2; client 1: 3 examples, 3 steps, moved 0 -> 3 (a slower site per
    step). p = (1/4, 3/4); per step: 2 and 1; tau_eff = 1/4 + 9/4 = 2.5; w' = 2.5 * (2/4 + 3/4) = 3.125, where
    FedAvg's mean is 2/4 + 9/4 = 2.75. The running statistic takes the mean (0.25 * 4 + 0.75 * 8 = 7). A key client 1
    did not send (its missing modality) is no change there: tau_eff * p_0 * 1 / 1 = 2.5 * 0.25 * 1 = 0.625."""
    g = {"w": np.zeros(1), "img": np.zeros(1), "bn.running_mean": np.zeros(1)}
    ups = [({"w": np.array([2.0]), "img": np.array([1.0]), "bn.running_mean": np.array([4.0])}, 1.0, 1.0)]
    ups.append(({"w": np.array([3.0]), "bn.running_mean": np.array([8.0])}, 3.0, 3.0))
    out = fednova_step(g, ups, stat_keys=frozenset({"bn.running_mean"}))
    assert out["w"][0] == pytest.approx(3.125)
    assert out["img"][0] == pytest.approx(0.625)
    assert out["bn.running_mean"][0] == pytest.approx(7.0)
    equal_steps = fednova_step(g, [(u, n, 2.0) for u, n, _ in ups])
    assert equal_steps["w"][0] == pytest.approx(2.75)  # the same steps everywhere: FedAvg


def test_fednova_strategy_reads_the_reported_steps_and_the_optimizers_momentum():
    from fedmm.fl.instructions import FitInstructions

    base = FitInstructions(round=1, seed=0, lr=0.1, local_epochs=1, batch_size=8, weight_decay=0.0)
    g = {"w": np.zeros(1, dtype=np.float32)}
    ups = [
        Update(client_id=0, params={"w": np.array([2.0], np.float32)}, num_examples=1, metrics={"fednova_steps": 1}),
        Update(client_id=1, params={"w": np.array([3.0], np.float32)}, num_examples=3, metrics={"fednova_steps": 3}),
    ]
    nova = make("fednova")
    nova.configure(1, [0, 1], base)
    out = nova.aggregate(1, g, ups)
    assert out["w"].dtype == np.float32 and out["w"][0] == pytest.approx(3.125)
    nova.configure(2, [0, 1], FitInstructions(**{**base.__dict__, "optimizer": "sgd"}))
    a = (1.0, 1 + 1.9 + 2.71)  # momentum 0.9: one step, three steps
    tau_eff = 0.25 * a[0] + 0.75 * a[1]
    assert nova.aggregate(2, g, ups)["w"][0] == pytest.approx(tau_eff * (0.25 * 2 / a[0] + 0.75 * 3 / a[1]), rel=1e-6)
    assert nova.refuses(Update(client_id=2, params={}, num_examples=3, metrics={})) is not None


def test_feddyn_server_rounds_by_hand():
    """alpha = 0.5, m = 3 clients. Round 1 from w = 0, clients 0 and 1 send 1 and 3: h = -0.5 * (1 + 3) / 3 = -2/3,
    w = mean 2 - h / alpha = 2 + 4/3 = 10/3 (FedAvg: 2, or 2.5 weighted by examples 1 and 3). Round 2 from 10/3,
    clients 0 and 2 send 4 and 2: h = -2/3 - 0.5 * (2/3 - 4/3) / 3 = -5/9, w = 3 + 10/9 = 37/9. The state
    survives a checkpoint (state_dict), and a client without the key is no change there."""
    from fedmm.fl.strategy import StrategyContext

    dyn = make("feddyn", alpha=0.5)
    dyn.setup(StrategyContext(num_clients=3))
    g = {"w": np.zeros(1), "img": np.zeros(1)}
    r1 = [
        Update(client_id=0, params={"w": np.array([1.0]), "img": np.array([3.0])}, num_examples=1),
        Update(client_id=1, params={"w": np.array([3.0])}, num_examples=3),
    ]
    g = dyn.aggregate(1, g, r1)
    assert g["w"][0] == pytest.approx(10 / 3) and dyn.h["w"][0] == pytest.approx(-2 / 3)
    # img: only client 0 moved it (+3): h = -0.5 * 3 / 3 = -0.5; mean over both = 1.5; w = 1.5 + 1 = 2.5
    assert g["img"][0] == pytest.approx(2.5)
    resumed = make("feddyn", alpha=0.5)
    resumed.setup(StrategyContext(num_clients=3))
    resumed.load_state_dict(dyn.state_dict())
    r2 = [
        Update(client_id=0, params={"w": np.array([4.0]), "img": g["img"]}, num_examples=1),
        Update(client_id=2, params={"w": np.array([2.0]), "img": g["img"]}, num_examples=5),
    ]
    assert resumed.aggregate(2, g, r2)["w"][0] == pytest.approx(37 / 9)
    assert resumed.h["w"][0] == pytest.approx(-5 / 9)


def test_feddyn_client_gradient_and_state_by_hand():
    """The client's gradient is g_loss - g_k + alpha * (w - w_global); after training g_k <- g_k - alpha * (w_k -
    w_global), kept by the site for its next round. One parameter w = [1, 2] received, g_k = [0.5, -1] kept from
    before, alpha = 0.1; after one step the model is at [0.8, 2.5]."""
    import torch

    from fedmm.fl.strategy.base import LocalRound
    from fedmm.fl.strategy.feddyn import DynamicRegulariser

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    kept = {}
    run = LocalRound(
        cid=0, model=model, train=None, val=None, instructions=None, score=None,
        load_state=lambda kind: {"weight": np.array([[0.5, -1.0]], np.float32)} if kind == "feddyn" else None,
        save_state=lambda kind, params: kept.update({kind: params}),
    )  # fmt: skip
    hook = DynamicRegulariser({"feddyn_alpha": 0.1})
    hook.before_training(run)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.8, 2.5]]))  # as if trained; the step's gradient is checked here:
    model.weight.grad = torch.tensor([[1.0, 1.0]])
    hook.on_step([model.weight])
    # 1 - 0.5 + 0.1 * (0.8 - 1) = 0.48; 1 + 1 + 0.1 * (2.5 - 2) = 2.05
    torch.testing.assert_close(model.weight.grad, torch.tensor([[0.48, 2.05]]))
    hook.after_training(run)
    # 0.5 - 0.1 * (0.8 - 1) = 0.52; -1 - 0.1 * (2.5 - 2) = -1.05
    np.testing.assert_allclose(kept["feddyn"]["weight"], [[0.52, -1.05]], rtol=1e-6)


def test_scaffold_server_moves_c_by_the_deltas_over_all_clients_and_the_model_by_fedavg():
    """N = 4 clients, 2 sampled: c += (dc_0 + dc_1) / 4 (NVFlare's controller would take their mean, / 2), the model
    is FedAvg's example-weighted mean; c travels for parameters only (not a running statistic), and starts at 0."""
    from fedmm.fl.strategy import StrategyContext

    sc = make("scaffold")
    sc.setup(StrategyContext(num_clients=4, stat_keys=frozenset({"bn.running_mean"})))
    g = {"w": np.zeros(2, np.float32), "bn.running_mean": np.zeros(1, np.float32)}
    assert sorted(sc.downlink(1, g)) == ["w"] and not sc.downlink(1, g)["w"].any()
    ups = [
        Update(client_id=0, params={"w": np.array([1.0, 2.0], np.float32)}, num_examples=1,
               strategy_params={"w": np.array([0.4, -0.8], np.float32)}),
        Update(client_id=1, params={"w": np.array([3.0, 2.0], np.float32)}, num_examples=3,
               strategy_params={"w": np.array([0.4, 0.0], np.float32)}),
    ]  # fmt: skip
    out = sc.aggregate(1, g, ups)
    np.testing.assert_allclose(out["w"], [2.5, 2.0])
    np.testing.assert_allclose(sc.downlink(2, out)["w"], [0.2, -0.2], rtol=1e-6)
    assert sc.downlink(2, out)["w"].dtype == np.float32
    again = make("scaffold")
    again.load_state_dict(sc.state_dict())
    np.testing.assert_allclose(again.c["w"], [0.2, -0.2], rtol=1e-6)
    stray = Update(client_id=2, params={}, num_examples=1, strategy_params={"w": np.zeros(2, np.float32)})
    assert "did not send" in sc.refuses(stray)


@pytest.mark.parametrize("rule", ["qfedavg", "fednova", "feddyn"])
def test_each_rule_keeps_dtypes_averages_the_statistics_and_refuses_an_empty_round(rule):
    """Besides their step: the tensors come back in the global's dtypes, running statistics and integer buffers get
    FedAvg's example-weighted mean (they are not parameters), and a round without updates is an error. q-FFL also
    takes a client loss of exactly 0 (F + 1e-10, as Flower)."""
    from fedmm.fl.strategy.feddyn import feddyn_step
    from fedmm.fl.strategy.qfedavg import qffl_step

    g = {
        "w": np.array([1.0, -1.0], np.float32),
        "bn.running_mean": np.zeros(1, np.float32),
        "bn.num_batches_tracked": np.array(4, np.int64),
    }
    ups = [
        ({"w": np.array([2.0, 0.0], np.float32), "bn.running_mean": np.array([1.0], np.float32),
          "bn.num_batches_tracked": np.array(10, np.int64)}, 1.0),
        ({"w": np.array([0.0, 1.0], np.float32), "bn.running_mean": np.array([5.0], np.float32),
          "bn.num_batches_tracked": np.array(20, np.int64)}, 3.0),
    ]  # fmt: skip
    stats = frozenset({"bn.running_mean"})
    steps = {
        "qfedavg": lambda u: qffl_step(g, [(p, f, n) for (p, n), f in zip(u, (0.0, 1.0))], 0.5, 0.1, stats),
        "fednova": lambda u: fednova_step(g, [(p, n, 2.0 * n) for p, n in u], stat_keys=stats),
        "feddyn": lambda u: feddyn_step(g, u, {}, alpha=0.1, num_clients=4, stat_keys=stats)[0],
    }
    out = steps[rule](ups)
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in g.items()}
    assert out["bn.running_mean"][0] == pytest.approx(0.25 * 1 + 0.75 * 5)
    assert int(out["bn.num_batches_tracked"]) == int(0.25 * 10 + 0.75 * 20)
    assert np.isfinite(out["w"]).all() and not np.array_equal(out["w"], g["w"])
    with pytest.raises(ValueError, match="needs at least one update"):
        steps[rule]([])
