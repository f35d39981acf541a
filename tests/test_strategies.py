"""The aggregation math of every strategy, on small arrays, against hand-computed or independently computed values."""

import numpy as np
import pytest

from fedmm.errors import FedmmError
from fedmm.fl.update import Update
from fedmm.fl.strategy import STRATEGIES, StrategyContext
from fedmm.fl.strategy.fedavg import masked_weighted_average, weighted_average
from fedmm.fl.strategy.fedopt import adaptive_step, momentum_step
from fedmm.fl.strategy.median import median
from fedmm.fl.strategy.trimmed_mean import trimmed_mean


def make(name, **kw):
    entry = STRATEGIES.get(name)
    return entry.factory(entry.config_cls(**kw))


def upd(cid, n, **params):
    return Update(client_id=cid, params={k: np.asarray(v, np.float32) for k, v in params.items()}, num_examples=n)


# -- server optimizers --------------------------------------------------------------------------------------------


def reference_fedopt(kind, x, deltas, lr, b1, b2, tau):
    """Reddi et al. (2021), Algorithm 2, written out per scalar with plain Python floats."""
    m, v = 0.0, tau * tau
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if kind == "adagrad":
            v = v + d * d
        elif kind == "yogi":
            v = v - (1 - b2) * d * d * (1 if v - d * d > 0 else -1 if v - d * d < 0 else 0)
        else:
            v = b2 * v + (1 - b2) * d * d
        x = x + lr * m / (v**0.5 + tau)
    return x


@pytest.mark.parametrize("name, kind", [("fedadam", "adam"), ("fedyogi", "yogi"), ("fedadagrad", "adagrad")])
def test_adaptive_server_optimizers_follow_the_update_rule(name, kind):
    strategy = make(name, server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x = {"w": np.array([0.5, -1.0, 2.0], np.float32)}
    targets = [np.array([0.7, -1.0, 1.0]), np.array([0.2, -0.5, 1.5]), np.array([0.9, -2.0, 2.0])]
    history = []
    for rnd, target in enumerate(targets, 1):
        # Two clients whose example-weighted mean is `target`.
        ups = [upd(0, 1, w=target - 0.3), upd(1, 3, w=target + 0.1)]
        history.append(target - x["w"].astype(np.float64))
        x = strategy.aggregate(rnd, x, ups)
        # The reference replays the same pseudo-gradients coordinate by coordinate.
        for i in range(3):
            expected = reference_fedopt(
                kind, 0.5 if i == 0 else (-1.0 if i == 1 else 2.0), [h[i] for h in history], 0.1, 0.9, 0.99, 1e-3
            )
            assert x["w"][i] == pytest.approx(expected, rel=1e-5, abs=1e-6), (rnd, i)


def test_fedadam_state_round_trips_and_stats_are_averaged_not_optimized():
    a = make("fedadam", server_lr=0.05)
    a.setup(StrategyContext(stat_keys=frozenset({"bn.running_var"})))
    # the statistics come first: the tensors after them are still optimized
    g = {"bn.running_var": np.ones(2, np.float32), "w": np.zeros(2, np.float32)}
    ups = [
        upd(0, 1, w=[1.0, 2.0], **{"bn.running_var": [2.0, 2.0]}),
        upd(1, 1, w=[3.0, 0.0], **{"bn.running_var": [4.0, 4.0]}),
    ]
    g1 = a.aggregate(1, g, ups)
    np.testing.assert_allclose(g1["bn.running_var"], [3.0, 3.0])
    # Adam's first step on the mean delta d = (2, 1): lr * (1 - b1) d / (sqrt(b2 tau^2 + (1 - b2) d^2) + tau)
    d = np.array([2.0, 1.0])
    np.testing.assert_allclose(g1["w"], 0.05 * 0.1 * d / (np.sqrt(0.99e-6 + 0.01 * d * d) + 1e-3), rtol=1e-6)
    assert g1["w"].dtype == np.float32
    b = make("fedadam", server_lr=0.05)
    b.setup(StrategyContext(stat_keys=frozenset({"bn.running_var"})))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.aggregate(2, g1, ups)["w"], b.aggregate(2, g1, ups)["w"])


def test_fedavgm_momentum():
    x, m = np.array([1.0]), np.zeros(1)
    x, m = momentum_step(x, np.array([0.5]), m, lr=1.0, momentum=0.9)
    assert (x[0], m[0]) == (1.5, 0.5)
    x, m = momentum_step(x, np.array([0.5]), m, lr=1.0, momentum=0.9)
    assert m[0] == pytest.approx(0.95) and x[0] == pytest.approx(2.45)
    # lr 1 and no momentum is FedAvg.
    s = make("fedavgm", server_lr=1.0, momentum=0.0)
    g = {"w": np.zeros(2, np.float32)}
    ups = [upd(0, 1, w=[1.0, 1.0]), upd(1, 3, w=[5.0, 1.0])]
    np.testing.assert_allclose(
        s.aggregate(1, g, ups)["w"], weighted_average(g, [(u.params, u.num_examples) for u in ups])["w"]
    )


def test_adaptive_step_rejects_unknown_kind():
    with pytest.raises(ValueError, match="^unknown adaptive optimizer 'nesterov'$"):
        adaptive_step("nesterov", np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1), 0.1, 0.9, 0.99, 1e-3)


def test_yogi_leaves_v_alone_when_it_equals_the_squared_change():
    # sign(v - d^2) = 0: v stays 0.25 exactly (dividing by the sign instead of multiplying would make it infinite).
    x, m, v = adaptive_step("yogi", np.zeros(1), np.array([0.5]), np.zeros(1), np.array([0.25]), 0.1, 0.9, 0.99, 0.0)
    assert v.tolist() == [0.25] and m[0] == pytest.approx(0.05) and x[0] == pytest.approx(0.1 * 0.05 / 0.5)


def test_fedopt_passes_integer_tensors_through_as_the_average_and_restores_float64_state():
    s = make("fedadam", server_lr=0.1)
    g = {"steps": np.array([4], np.int64), "w": np.zeros(1, np.float32)}
    ups = [
        Update(client_id=i, params={"steps": np.array([n], np.int64), "w": np.ones(1, np.float32)}, num_examples=1)
        for i, n in enumerate([6, 10])
    ]
    out = s.aggregate(1, g, ups)
    assert out["steps"].tolist() == [8] and out["steps"].dtype == np.int64  # averaged, not optimized
    assert set(s.state_dict()["m"]) == {"w"}
    restored = make("fedadam")
    restored.load_state_dict({"m": {"w": np.array([0.1], np.float32)}, "v": {"w": np.array([0.2], np.float32)}})
    assert restored.m["w"].dtype == restored.v["w"].dtype == np.float64  # the moments keep accumulating in float64
    empty = make("fedadam")
    empty.load_state_dict({})  # a checkpoint written before the first round
    assert empty.m == {} and empty.v == {}


# -- robust aggregation -------------------------------------------------------------------------------------------


def test_median_and_trimmed_mean_by_hand():
    g = {"w": np.zeros(2, np.float32), "img": np.full(1, 7.0, np.float32)}
    ups = [
        {"w": np.array([1.0, 10.0], np.float32), "img": np.array([1.0], np.float32)},
        {"w": np.array([2.0, -50.0], np.float32)},  # lacks the image encoder: no vote on "img"
        {"w": np.array([100.0, 20.0], np.float32), "img": np.array([3.0], np.float32)},
        {"w": np.array([3.0, 30.0], np.float32), "img": np.array([5.0], np.float32)},
    ]
    med = median(g, ups)
    np.testing.assert_allclose(med["w"], [2.5, 15.0])
    np.testing.assert_allclose(med["img"], [3.0])
    tm = trimmed_mean(g, ups, beta=0.25)  # drops one value at each end of the four
    np.testing.assert_allclose(tm["w"], [2.5, 15.0])
    np.testing.assert_allclose(trimmed_mean(g, ups, beta=0.0)["w"], [26.5, 2.5])
    assert median(g, [])["img"][0] == 7.0  # nobody sent it: the global value


def test_trimmed_mean_cuts_floor_of_beta_n_where_ceil_and_the_median_differ():
    from fedmm.fl.strategy.trimmed_mean import trim_count

    # n=7, beta=0.2: floor(1.4) = 1 value cut at each end -> mean(1, 2, 3, 4, 10) = 4; ceil would cut 2 (-> 3.0), and
    # the median is 3.0 too, so this example tells the rule from both.
    vals = [1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 10.0]
    g = {"w": np.zeros(1, np.float32)}
    ups = [{"w": np.array([v], np.float32)} for v in vals]
    np.testing.assert_allclose(trimmed_mean(g, ups, beta=0.2)["w"], [4.0])
    assert [trim_count(n, 0.2) for n in (2, 3, 7, 10, 11)] == [0, 1, 1, 2, 2]
    assert trim_count(5, 0.45) == 2 and trim_count(4, 0.45) == 1
    assert trim_count(4, 0.9) == 1 and trim_count(5, 0.9) == 2  # never past the middle: one value always stays
    assert make("trimmed_mean", beta=0.0).cfg.beta == 0.0  # beta 0 is the plain mean, allowed
    for beta in (0.5, -0.1, 1.0):
        with pytest.raises(FedmmError, match=rf"strategy.beta must be in \[0, 0.5\) \(got {beta}\)"):
            make("trimmed_mean", beta=beta)


# -- missing modalities -------------------------------------------------------------------------------------------


def test_modality_avg_averages_each_key_over_its_senders_only():
    g = {"image": np.zeros(2, np.float32), "head": np.zeros(2, np.float32), "text": np.ones(2, np.float32)}
    ups = [
        upd(0, 1, image=[4.0, 4.0], head=[4.0, 4.0]),  # image-only client
        upd(1, 3, head=[1.0, 1.0]),
    ]  # a client that sent neither encoder
    out = make("modality_avg").aggregate(1, g, ups)
    np.testing.assert_allclose(out["image"], [4.0, 4.0])  # FedAvg would give (4 * 1 + 0 * 3) / 4 = 1
    np.testing.assert_allclose(out["head"], [(4 + 3) / 4] * 2)
    np.testing.assert_allclose(out["text"], [1.0, 1.0])  # nobody sent it
    np.testing.assert_allclose(weighted_average(g, [(u.params, u.num_examples) for u in ups])["image"], [1.0, 1.0])
    with pytest.raises(ValueError):
        masked_weighted_average(g, [({"head": g["head"]}, 0.0)])


def test_fedprox_asks_clients_for_the_proximal_term():
    from fedmm.fl.instructions import FitInstructions

    base = FitInstructions(
        round=1,
        seed=0,
        lr=0.1,
        local_epochs=1,
        batch_size=8,
        weight_decay=0.0,
        strategy="fedprox",
        strategy_options={"other": 1},
    )
    cfgs = make("fedprox", mu=0.5).configure(1, [0, 3], base)
    assert set(cfgs) == {0, 3}
    assert all(c.strategy_options == {"other": 1, "prox_mu": 0.5} and c.lr == 0.1 for c in cfgs.values())
    assert base.strategy_options == {"other": 1}  # the run's template is not changed
    assert FitInstructions.from_json(cfgs[0].to_json()) == cfgs[0]  # what a remote client reads back
