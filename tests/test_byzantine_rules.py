"""Krum, Multi-Krum (Blanchard et al., 2017) and Bulyan (El Mhamdi et al., 2018) against direct implementations of
the papers' rules, written per client and per coordinate, and hand-worked cases a wrong neighbour count fails."""

import numpy as np
import pytest

from fedmm.errors import FedmmError
from fedmm.fl.strategy import STRATEGIES
from fedmm.fl.strategy.bulyan import bulyan
from fedmm.fl.strategy.krum import krum_scores, multi_krum_select
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
    with pytest.raises(FedmmError, match=r"bulyan with strategy.f=1 needs at least 7 updates per round \(4f \+ 3\)"):
        s.aggregate(1, g, _updates(values))


def test_missing_modality_keys_count_with_the_global_value():
    g = {"img": np.zeros(1, np.float32), "txt": np.full(1, 5.0, np.float32)}
    ups = [
        Update(client_id=i, params={"img": np.array([v], np.float32)}, num_examples=1)
        for i, v in enumerate([1.0, 1.0, 1.0, 1.0, 1.0])
    ]
    entry = STRATEGIES.get("multikrum")
    out = entry.factory(entry.config_cls()).aggregate(1, g, ups)
    assert out["img"][0] == 1.0 and out["txt"][0] == 5.0
