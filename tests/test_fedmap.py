"""FedMAP: client features, teacher search, student distillation, the gate, and exact state."""

import numpy as np
import pytest

from fedmm.errors import FedmmError
from fedmm.fl.update import Update
from fedmm.fl.strategy import StrategyContext
from fedmm.fl.strategy.fedmap import (
    FEATURES,
    FedMAP,
    FedMAPConfig,
    candidate_mixes,
    client_features,
    gate,
    kl,
    softmax,
    teacher_features,
    zscore,
)


def update(cid, n, modalities, **metrics):
    base = dict(c_k=0.1, p_k=0.5, val_loss=1.0, grad_norm=2.0, diversity=0.8, imbalance_ratio=0.4)
    w = np.full(3, float(cid), np.float32)
    return Update(
        client_id=cid,
        params={"head": w, **({"img": w} if "image" in modalities else {})},
        num_examples=n,
        metrics={**base, **metrics},
        modalities=frozenset(modalities),
    )


def test_client_features_carry_the_real_modality_flags():
    ups = [update(0, 10, {"image", "text"}), update(1, 20, {"text"}), update(2, 30, {"image"})]
    raw = client_features(ups)
    col = {f: raw[:, i] for i, f in enumerate(FEATURES)}
    assert col["m_img"].tolist() == [1, 0, 1] and col["m_txt"].tolist() == [1, 1, 0]
    assert col["modality_div"].tolist() == [1.0, 0.5, 0.5]
    assert col["n_k"].tolist() == [10, 20, 30]


def test_zscore_counts_zero_spread_as_one_and_clips():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    z = zscore(x, clip=3.0)
    np.testing.assert_allclose(z[:, 0], [-1.224744871, 1.224744871, 0.0])
    np.testing.assert_allclose(z[:, 1], 0.0)
    assert np.abs(zscore(np.array([[0.0]] * 20 + [[1000.0]]), clip=2.0)).max() == 2.0


def test_teacher_features_by_hand():
    ups = [
        update(0, 10, {"image", "text"}, p_k=0.8, c_k=-0.2, val_loss=0.5),
        update(1, 1000, {"text"}, p_k=0.4, c_k=0.4, val_loss=1.5),
    ]
    tf = teacher_features(client_features(ups), perf_mix_lambda=0.5, clip=3.0)
    # perf = 0.5 * p + 0.5 * max(c, 0): [0.4, 0.4] -> equal -> z = 0 for both
    np.testing.assert_allclose(tf[:, 0], [0.0, 0.0])
    np.testing.assert_allclose(tf[:, 1], [-1.0, 1.0])  # z(log n) of two distinct values is -1, +1
    np.testing.assert_allclose(tf[:, 3], [1.0, -1.0])  # both modalities beat one
    np.testing.assert_allclose(tf[:, 4], [1.0, -1.0])  # lower validation loss is better


def test_candidate_mixes_are_reproducible_and_on_the_simplex():
    prev = np.full(7, 1 / 7)
    a, b = candidate_mixes(prev, 4, seed=1, rnd=3), candidate_mixes(prev, 4, seed=1, rnd=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 7) and np.allclose(a.sum(1), 1) and (a >= 0).all()
    np.testing.assert_array_equal(a[0], prev)
    assert not np.array_equal(a, candidate_mixes(prev, 4, seed=1, rnd=4))


def test_gate_rules():
    cfg = FedMAPConfig(student_warmup=2, student_win_needed=2)
    t, s = np.array([0.5, 0.5]), np.array([0.6, 0.4])
    kl_ts = kl(t, s)
    beta_kl = min(1.0, 0.2 / np.sqrt(2 * kl_ts))
    assert beta_kl > 0.6
    beta, streak, passed = gate(1, t, s, 0.80, 0.80, 0, cfg)  # warmup caps the student's share
    assert (beta, streak, passed) == (0.25, 1, True)
    beta, streak, _ = gate(3, t, s, 0.80, 0.79, streak, cfg)  # failed outside warmup: capped, streak reset
    assert (beta, streak) == (0.25, 0)
    beta, streak, _ = gate(3, t, s, 0.80, 0.81, 0, cfg)  # passed once: the trust-region step
    assert beta == pytest.approx(beta_kl) and streak == 1
    far = np.array([0.99, 0.01])
    beta, streak, _ = gate(4, np.array([0.01, 0.99]), far, 0.8, 0.9, 1, cfg)  # streak reached: student dominates
    assert streak == 2 and beta == 0.6
    assert gate(9, t, s, 0.8, 0.9, 5, FedMAPConfig(use_student=False))[0] == 0.0


def _run_rounds(strategy, rounds, evals):
    g = {"head": np.zeros(3, np.float32), "img": np.zeros(3, np.float32)}
    ups = [
        update(0, 50, {"image", "text"}, p_k=0.7),
        update(1, 10, {"text"}, p_k=0.3, c_k=-0.1),
        update(2, 30, {"image"}, p_k=0.5),
    ]
    outs = []
    for rnd in range(1, rounds + 1):
        g = strategy.aggregate(rnd, g, ups)
        outs.append((g, dict(strategy.round_metrics)))
    return outs


def _ctx(evals, seed=0, run_dir=None):
    def evaluate_val(params):
        evals.append(params)
        # Validation score that prefers a global "head" close to 1.5.
        return {"accuracy": float(1.0 - abs(params["head"].mean() - 1.5)), "loss": 0.0}

    return StrategyContext(evaluate_val=evaluate_val, metric="accuracy", seed=seed, run_dir=run_dir)


def test_fedmap_bounded_evaluations_modality_aware_average_and_exact_resume(tmp_path):
    cfg = FedMAPConfig(n_trials_per_round=3)
    evals = []
    s = FedMAP(cfg)
    s.setup(_ctx(evals, run_dir=tmp_path))
    outs = _run_rounds(s, 2, evals)
    assert len(evals) == 2 * (3 + 1) and outs[0][1]["evals"] == 4
    g1, m1 = outs[0]
    w = m1["weights"]
    assert set(w) == {0, 1, 2} and sum(w.values()) == pytest.approx(1.0)
    # "img" is averaged only over clients 0 and 2 (client 1 has no images), with their weights renormalised.
    expected_img = (w[0] * 0 + w[2] * 2) / (w[0] + w[2])
    assert g1["img"][0] == pytest.approx(expected_img, rel=1e-5)
    assert (tmp_path / "aggregator.safetensors").exists()

    # A strategy restored from round 1's state gives round 2 exactly.
    a = FedMAP(cfg)
    a.setup(_ctx([], run_dir=tmp_path / "a"))
    _run_rounds(a, 1, [])
    state = a.state_dict()
    b = FedMAP(cfg)
    b.setup(_ctx([], run_dir=tmp_path / "b"))
    b.load_state_dict(state)
    ups = [
        update(0, 50, {"image", "text"}, p_k=0.7),
        update(1, 10, {"text"}, p_k=0.3, c_k=-0.1),
        update(2, 30, {"image"}, p_k=0.5),
    ]
    ga, gb = a.aggregate(2, outs[0][0], ups), b.aggregate(2, outs[0][0], ups)
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])
    assert a.round_metrics == b.round_metrics


def test_fedmap_aggregator_file_warm_starts_a_new_run(tmp_path):
    path = tmp_path / "agg.safetensors"
    s = FedMAP(FedMAPConfig(aggregator_path=str(path)))
    s.setup(_ctx([]))
    _run_rounds(s, 2, [])
    fresh = FedMAP(FedMAPConfig(aggregator_path=str(tmp_path / "none.safetensors")))
    fresh.setup(_ctx([]))
    warm = FedMAP(FedMAPConfig(aggregator_path=str(path)))
    warm.setup(_ctx([]))
    x = np.zeros((1, 10))
    import torch

    assert not torch.equal(warm.student(torch.from_numpy(x)), fresh.student(torch.from_numpy(x)))
    assert torch.equal(warm.student(torch.from_numpy(x)), s.student(torch.from_numpy(x)))
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(FedmmError, match="cannot load the FedMAP aggregator"):
        FedMAP(FedMAPConfig(aggregator_path=str(path))).setup(_ctx([]))


def test_fedmap_config_errors():
    with pytest.raises(FedmmError, match="input_dim must be 10"):
        FedMAP(FedMAPConfig(input_dim=7))
    with pytest.raises(FedmmError, match="validation split"):
        FedMAP(FedMAPConfig()).setup(StrategyContext())
    assert softmax(np.array([0.0, 0.0])).tolist() == [0.5, 0.5]
