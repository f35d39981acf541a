"""Krum, Multi-Krum (Blanchard et al., 2017) and Bulyan (El Mhamdi et al., 2018) against direct implementations of
the papers' rules, written per client and per coordinate, and hand-worked cases a wrong neighbour count fails."""

import numpy as np
import pytest

from fedmm.errors import FedmmError
from fedmm.fl.strategy import STRATEGIES
from fedmm.fl.strategy.bulyan import bulyan
from fedmm.fl.strategy.krum import flatten, krum_scores, multi_krum_select, unflatten
from fedmm.fl.update import Update


def krum_direct(points: list[np.ndarray], f: int) -> list[float]:
    """The paper's score, one client at a time: sum of squared distances to its n - f - 2 closest others."""
    n, scores = len(points), []
    for i in range(n):
        d = sorted(float(np.sum((points[i] - points[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return scores


def bulyan_direct(points: list[np.ndarray], f: int) -> np.ndarray:
    """Selection by repeated Krum, then per coordinate the mean of the theta - 2f values nearest the median."""
    remaining, chosen = list(range(len(points))), []
    while len(chosen) < len(points) - 2 * f:
        scores = krum_direct([points[i] for i in remaining], f)
        best = min(range(len(remaining)), key=lambda j: (scores[j], j))
        chosen.append(remaining.pop(best))
    beta = len(chosen) - 2 * f
    out = np.zeros_like(points[0])
    for c in range(len(out)):
        column = [points[i][c] for i in chosen]
        med = float(np.median(column))
        nearest = sorted(range(len(column)), key=lambda j: (abs(column[j] - med), j))[:beta]
        out[c] = np.mean([column[j] for j in nearest])
    return out


def test_krum_by_hand_where_a_neighbour_count_of_n_minus_f_minus_1_picks_another():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    assert krum_scores(x, f=1).tolist() == [5.0, 2.0, 5.0, 65.0, 82.0]  # 2 = n - f - 2 neighbours each
    assert multi_krum_select(x, 1, 1).tolist() == [1]  # with 3 neighbours the scores are 105, 83, 69: client 2
    assert sorted(multi_krum_select(x, 1, 4).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(5))
def test_krum_and_bulyan_match_the_direct_rules(seed):
    rng = np.random.default_rng(seed)
    honest = [rng.normal(0, 1, 6) for _ in range(7)]
    byzantine = [rng.normal(0, 1, 6) * 50 + 20, np.full(6, -30.0)]
    points = honest + byzantine
    x = np.stack(points)
    np.testing.assert_allclose(krum_scores(x, 2), krum_direct(points, 2), rtol=1e-12)
    assert multi_krum_select(x, 2, 1)[0] == int(np.argmin(krum_direct(points, 2)))
    agg, chosen = bulyan(x, 1)
    np.testing.assert_allclose(agg, bulyan_direct(points, 1), rtol=1e-12)
    assert not {7, 8} & set(chosen[:5])  # the two outliers are never the first picks


def _updates(values):
    return [
        Update(client_id=i, params={"w": np.array(v, dtype=np.float32)}, num_examples=1 + i)
        for i, v in enumerate(values)
    ]


def test_strategies_resist_an_outlier_and_report_what_they_selected():
    g = {"w": np.zeros(2, np.float32)}
    values = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05], [1e6, -1e6]]
    for name, expect in (("krum", 1.0), ("multikrum", 1.0)):
        entry = STRATEGIES.get(name)
        s = entry.factory(entry.config_cls())
        out = s.aggregate(1, g, _updates(values))
        assert abs(out["w"][0] - expect) < 0.11, name
        assert 4 not in s.round_metrics["selected"]
    entry = STRATEGIES.get("bulyan")
    s = entry.factory(entry.config_cls())
    out = s.aggregate(1, g, _updates(values + [[1.02, 0.98], [0.95, 1.0]]))
    assert abs(out["w"][0] - 1.0) < 0.1 and 4 not in s.round_metrics["selected"]
    assert s.round_metrics["f"] == 1
    # 5 updates (clients that failed) support f = 0 only: the round says so instead of stopping the run
    s.aggregate(1, g, _updates(values))
    assert s.round_metrics["f"] == 0
    with pytest.raises(FedmmError, match=r"bulyan with strategy.f=1 needs at least 7 updates per round \(4f \+ 3\)"):
        bulyan(flatten(g, [u.params for u in _updates(values)]), 1)  # the rule itself never runs outside its bound


def test_missing_modality_keys_count_with_the_global_value():
    g = {"img": np.zeros(1, np.float32), "txt": np.full(1, 5.0, np.float32)}
    ups = [
        Update(client_id=i, params={"img": np.array([v], np.float32)}, num_examples=1)
        for i, v in enumerate([1.0, 1.0, 1.0, 1.0, 1.0])
    ]
    entry = STRATEGIES.get("multikrum")
    out = entry.factory(entry.config_cls()).aggregate(1, g, ups)
    assert out["img"][0] == 1.0 and out["txt"][0] == 5.0


def make(name, **kw):
    entry = STRATEGIES.get(name)
    return entry.factory(entry.config_cls(**kw))


def test_krum_keeps_one_multikrum_n_minus_f_and_both_check_their_options():
    """Two tensors of different shapes (the flattening must advance past each), five clients on a line and one far
    away: Krum returns the single best client as is, Multi-Krum the mean of the n - f best."""
    g = {"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float16)}
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 100.0]
    ups = [
        Update(
            client_id=i, params={"a": np.full((2, 2), v, np.float32), "b": np.full(3, -v, np.float16)}, num_examples=1
        )
        for i, v in enumerate(values)
    ]
    out = make("krum", f=1).aggregate(1, g, ups)
    # clients 1, 2, 3 tie (their 3 nearest are at 1, 1, 2 steps): the lowest index wins
    assert out["a"].tolist() == [[1.0, 1.0], [1.0, 1.0]] and out["b"].tolist() == [-1.0] * 3
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.float16
    multi = make("multikrum", f=1)
    out = multi.aggregate(1, g, ups)
    assert multi.round_metrics["selected"] == [0, 1, 2, 3, 4] and out["a"][0, 0] == 2.0  # n - f = 5 kept
    out = make("multikrum", f=1, m=2).aggregate(1, g, ups)
    assert out["a"][0, 0] == 1.5  # the two best: clients 1 and 2
    assert make("krum", f=0).cfg.f == 0 and make("multikrum", m=1).cfg.m == 1  # the smallest allowed values
    with pytest.raises(FedmmError, match=r"strategy.f must be >= 0 \(got -1\)"):
        make("krum", f=-1)
    with pytest.raises(FedmmError, match=r"strategy.m must be at least 1 \(got 0\)"):
        make("multikrum", m=0)
    # n - f - 2 neighbours, but at least one and at most n - 1 (here n = 3, f = 2: one neighbour each)
    x = np.array([[0.0], [1.0], [3.0]])
    assert krum_scores(x, 2).tolist() == [1.0, 1.0, 4.0]
    assert krum_scores(x, 0).tolist() == [1.0, 1.0, 4.0]  # n - f - 2 = 1
    assert krum_scores(np.array([[0.0], [1.0]]), 5).tolist() == [1.0, 1.0]


def test_flattening_is_float64_and_walks_every_tensor():
    # float16 updates far apart: their squared distances (> 65,504) overflow in float16 but not in float64
    g = {"a": np.zeros(1, np.float16), "b": np.zeros((2, 2), np.float16), "c": np.zeros(3, np.float16)}
    ups = [{k: np.full(v.shape, s, np.float16) for k, v in g.items()} for s in (0.0, 300.0, 310.0)]
    x = flatten(g, ups)
    assert x.dtype == np.float64 and x.shape == (3, 8)
    assert krum_scores(x, 0).tolist() == [8 * 300.0**2, 8 * 10.0**2, 8 * 10.0**2]  # k = n - f - 2 = 1 nearest
    back = unflatten(g, np.arange(8.0))  # three tensors: each starts where the last ended
    assert back["a"].tolist() == [0.0] and back["b"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert back["c"].tolist() == [5.0, 6.0, 7.0] and back["c"].dtype == np.float16
    assert krum_scores(np.zeros((1, 2)), 0).tolist() == [0.0]  # a lone client has no neighbours to sum


def test_multikrum_ties_go_to_the_lower_index_and_its_default_keep(monkeypatch):
    import fedmm.fl.strategy.krum as krum

    # 40 scores in three tied groups: a stable order, not whatever an unstable sort gives
    scores = np.random.default_rng(0).integers(0, 3, 40).astype(float)
    monkeypatch.setattr(krum, "krum_scores", lambda x, f: scores)
    picked = krum.multi_krum_select(np.zeros((40, 1)), 1, 20).tolist()
    assert picked == [i for i in range(40) if scores[i] == 0] + [i for i in range(40) if scores[i] == 1][:6]
    assert make("multikrum", f=2).keep(3, 2) == 1 and make("multikrum", f=2).keep(7, 2) == 5


def test_coordinatewise_rules_answer_in_the_global_dtype():
    g = {"w": np.zeros(3, np.float32)}
    ups = [{"w": np.array([1.0, 2.0, 3.0], np.float32) * s} for s in (1, 2, 4)]
    for name in ("median", "trimmed_mean"):
        out = make(name).aggregate(1, g, [Update(client_id=i, params=p, num_examples=1) for i, p in enumerate(ups)])
        assert out["w"].dtype == np.float32 and out["w"].tolist() == [2.0, 4.0, 6.0], name
