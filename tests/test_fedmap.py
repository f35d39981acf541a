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
    balance_feature,
    candidate_mixes,
    client_features,
    distill_loss,
    gate,
    gate_original,
    label_statistics,
    kl,
    lipschitz_tau,
    original_candidate_mixes,
    search_score,
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
    # By hand: KL(t || s) = 0.5 ln(5/6) + 0.5 ln(5/4) = 0.020411 (KL(s || t) would be 0.020136), and with
    # gate_eta = 0.2 the trust-region step is 0.2 / sqrt(2 * 0.020411) = 0.98988.
    assert kl(t, s) == pytest.approx(0.0204110, abs=1e-7)
    beta_kl = 0.98988
    beta, streak, passed, _ = gate(1, t, s, 0.80, 0.80, 0, cfg)  # warmup caps the student's share
    assert (beta, streak, passed) == (0.25, 1, True)
    beta, streak, _, _ = gate(3, t, s, 0.80, 0.79, streak, cfg)  # failed outside warmup: capped, streak reset
    assert (beta, streak) == (0.25, 0)
    beta, streak, _, _ = gate(3, t, s, 0.80, 0.81, 0, cfg)  # passed once: the trust-region step
    assert beta == pytest.approx(beta_kl, abs=1e-5) and streak == 1
    far = np.array([0.99, 0.01])
    beta, streak, _, _ = gate(4, np.array([0.01, 0.99]), far, 0.8, 0.9, 1, cfg)  # streak reached: student dominates
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


@pytest.mark.parametrize("variant", ["fixed", "original"])
def test_fedmap_bounded_evaluations_modality_aware_average_and_exact_resume(tmp_path, variant):
    cfg = FedMAPConfig(n_trials_per_round=3, variant=variant)
    evals = []
    s = FedMAP(cfg)
    s.setup(_ctx(evals, run_dir=tmp_path))
    outs = _run_rounds(s, 2, evals)
    per_round = 3 + 1 + (variant == "original")  # the original's Lipschitz probe is one more evaluation
    assert len(evals) == 2 * per_round and outs[0][1]["evals"] == per_round
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


# -- variant=original: each published rule that fedmm's default changes, pinned ---------------------------------


def test_original_forces_the_modality_flags_to_one():
    ups = [update(0, 10, {"image", "text"}), update(1, 20, {"text"}), update(2, 30, {"image"})]
    col = {f: client_features(ups, forced_modalities=True)[:, i] for i, f in enumerate(FEATURES)}
    assert col["m_img"].tolist() == col["m_txt"].tolist() == [1, 1, 1]
    assert col["modality_div"].tolist() == [1.0, 1.0, 1.0]


def test_original_label_statistics_are_the_published_clients():
    """The published MM-IMDb client sends no diversity and, as imbalance, the share of positive label entries."""
    from fedmm.data.dataset import MultimodalDataset

    multi = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], np.float32)  # per-example means 1/4, 2/4, 3/4
    data = MultimodalDataset(labels=multi, label_names=("a", "b", "c", "d"), texts=["x"] * 3)
    assert label_statistics(data, "original") == {"diversity": 0.0, "imbalance_ratio": pytest.approx(0.5)}
    fixed = label_statistics(data)  # label a's share of the 6 positives; the entropy of (3, 2, 1, 0) / log 4
    assert fixed["imbalance_ratio"] == pytest.approx(0.5) and fixed["diversity"] == pytest.approx(0.7296, abs=1e-4)
    single = MultimodalDataset(labels=np.array([0, 0, 0, 1]), label_names=("a", "b", "c"), texts=["x"] * 4)
    assert label_statistics(single, "original")["imbalance_ratio"] == pytest.approx(1 / 3)  # one-hot: 1 / labels
    assert label_statistics(single)["imbalance_ratio"] == 0.75


def test_zscore_tolerance_of_the_original():
    """0.1 three times has a spread of ~1e-17 in binary: the original's (x - mean) / (std + 1e-8) gives ~0, where
    dividing by the spread alone gives -1 for every client."""
    x = np.array([[0.1], [0.1], [0.1], [0.1 + 0.1 + 0.1 - 0.2]])
    assert 0 < x.std() < 1e-16
    np.testing.assert_allclose(zscore(x, 3.0), 0.0, atol=1e-7)


def test_original_balance_prefers_a_share_of_one_half():
    r = np.array([0.5, 0.3, 0.9])
    np.testing.assert_allclose(balance_feature(r, "original"), [1.0, 0.6, 0.2])
    np.testing.assert_allclose(balance_feature(r, "fixed"), [-0.5, -0.3, -0.9])
    ups = [update(i, 10, {"image", "text"}, imbalance_ratio=v) for i, v in enumerate(r)]
    raw = client_features(ups)
    fixed, orig = teacher_features(raw, 0.7, 3.0)[:, 6], teacher_features(raw, 0.7, 3.0, "original")[:, 6]
    assert np.argmax(fixed) == 1 and np.argmax(orig) == 0  # the two rules rank the clients differently


def test_original_candidates_are_normalised_uniform_draws_without_the_previous_best():
    a = original_candidate_mixes(4, seed=1, rnd=3)
    np.testing.assert_array_equal(a, original_candidate_mixes(4, seed=1, rnd=3))
    assert a.shape == (4, 7) and np.allclose(a.sum(1), 1) and (a > 0).all()
    assert not np.allclose(a[0], 1 / 7)
    # Normalised uniforms spread far less than a flat Dirichlet's draws (variance 6/392 = 0.0153 per component).
    many = original_candidate_mixes(4000, seed=0, rnd=1)
    assert many.mean(0) == pytest.approx(np.full(7, 1 / 7), abs=0.005)
    assert 0.004 < many.var(0).max() < 0.009
    assert candidate_mixes(np.full(7, 1 / 7), 4000, seed=0, rnd=1)[1:].var(0).min() > 0.013


def test_original_search_scores_the_published_test_f1_macro_which_is_micro_f1():
    m = {"micro_f1": 0.8, "macro_f1": 0.5, "loss": 1.0}
    assert search_score(m, "macro_f1", "original") == 0.8 and search_score(m, "macro_f1") == 0.5
    assert search_score({"accuracy": 0.7, "loss": 0.1}, "accuracy", "original") == 0.7
    assert search_score({"vqa_accuracy": 0.6, "loss": 0.1}, "vqa_accuracy", "original") == 0.6


def test_original_distillation_divides_the_kl_by_the_number_of_clients():
    import torch

    t = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    logp = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    kl_by_hand = 0.7 * np.log(0.7 / 0.5) + 0.2 * np.log(0.2 / 0.25) + 0.1 * np.log(0.1 / 0.25)
    neg_entropy = 0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)
    assert distill_loss(t, logp, 0.01).item() == pytest.approx(kl_by_hand + 0.01 * neg_entropy)
    assert distill_loss(t, logp, 0.01, "original").item() == pytest.approx(kl_by_hand / 3 + 0.01 * neg_entropy)


def test_original_gate_needs_kl_within_tau_and_counts_warmup_strictly():
    # tau by hand: the probe lost 0.01 over an L1 step of 0.05, so L = 0.2 and tau = 0.5 (0.002 / 0.2)^2.
    assert lipschitz_tau(0.80, 0.79, 0.05, 0.002) == pytest.approx(5e-5)
    assert lipschitz_tau(0.80, 0.80, 0.05, 0.002) == pytest.approx(0.5 * (0.002 / 1e-8) ** 2)  # flat: no bound
    cfg = FedMAPConfig(student_warmup=2, student_win_needed=2)
    t, s = np.array([0.5, 0.5]), np.array([0.6, 0.4])
    kl_ts = 0.020411  # by hand, as in test_gate_rules
    beta_kl = 0.98988  # 0.2 / sqrt(2 KL)
    big, small = 1.0, kl_ts / 2
    # Round == warmup: the original is past its warm-up (`<`), the fixed gate still in it (`<=`).
    assert gate_original(2, t, s, 0.8, 0.8, big, 0, cfg)[:3] == (pytest.approx(beta_kl, abs=1e-5), 1, True)
    assert gate(2, t, s, 0.8, 0.8, 0, cfg)[0] == 0.25
    # The student scores better but KL > tau: it fails, the streak resets and its share is capped.
    assert gate_original(3, t, s, 0.8, 0.9, small, 1, cfg)[:3] == (0.25, 0, False)
    assert gate(3, t, s, 0.8, 0.9, 1, cfg)[:2] == (pytest.approx(beta_kl, abs=1e-5), 2)  # fixed: passed, streak 2
    # The student scores worse but KL <= tau: the original still takes the trust-region step; fixed caps it.
    assert gate_original(3, t, s, 0.8, 0.7, big, 0, cfg)[:3] == (pytest.approx(beta_kl, abs=1e-5), 0, False)
    assert gate(3, t, s, 0.8, 0.7, 0, cfg)[0] == 0.25
    far_t, far_s = np.array([0.01, 0.99]), np.array([0.99, 0.01])  # beta_kl 0.067: the streak lifts it to 0.6
    assert gate_original(3, far_t, far_s, 0.8, 0.8, 1e9, 1, cfg)[:2] == (0.6, 2)
    assert gate_original(1, t, s, 0.8, 0.8, big, 0, FedMAPConfig(use_student=False))[0] == 0.0


def test_original_pth_aggregator_warm_starts_and_is_written_back(tmp_path):
    import torch
    from torch import nn

    class OriginalMLP(nn.Module):  # the published AggregatorMLP's layout (a ReLU module between two layers)
        def __init__(self, input_dim=10, hidden_dim=16):
            super().__init__()
            self.fc1, self.relu, self.fc2 = nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1)

        def forward(self, x):
            return self.fc2(self.relu(self.fc1(x)))

    torch.manual_seed(3)
    theirs = OriginalMLP()
    path = tmp_path / "aggregator_mlp.pth"
    torch.save(theirs.state_dict(), path)
    s = FedMAP(FedMAPConfig(variant="original", aggregator_path=str(path)))
    s.setup(_ctx([]))
    x = torch.randn(5, 10)
    torch.testing.assert_close(s.student(x.double()).float(), theirs(x).view(-1), rtol=1e-6, atol=1e-6)
    _run_rounds(s, 1, [])  # one distillation step, then saved back in the original's format
    back = torch.load(path, weights_only=True)
    assert (
        set(back) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"} and back["fc1.weight"].dtype == torch.float32
    )
    theirs.load_state_dict(back)
    assert not torch.equal(back["fc1.weight"], OriginalMLP().fc1.weight)

    torch.save(OriginalMLP(hidden_dim=32).state_dict(), path)
    with pytest.raises(FedmmError, match=r"fc1.weight has shape \(32, 10\), this aggregator's is \(16, 10\)"):
        FedMAP(FedMAPConfig(aggregator_path=str(path))).setup(_ctx([]))
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(FedmmError, match="are not the aggregator's"):
        FedMAP(FedMAPConfig(aggregator_path=str(path))).setup(_ctx([]))
    path.write_bytes(b"not a torch file")
    with pytest.raises(FedmmError, match="cannot load the FedMAP aggregator"):
        FedMAP(FedMAPConfig(aggregator_path=str(path))).setup(_ctx([]))
    with pytest.raises(FedmmError, match="strategy.variant must be fixed or original"):
        FedMAPConfig(variant="paper")


@pytest.mark.parametrize("variant", ["fixed", "original"])
def test_the_teacher_is_the_best_scoring_candidate_and_one_distillation_step_moves_the_student_toward_it(variant):
    import torch

    # A validation "score" that prefers the mean closest to 1.3 (not a client's value, not the plain mean), so the
    # candidates score differently; every evaluation is logged with the parameters it scored.
    scored = []

    def evaluate_val(params):
        score = -float(abs(params["head"][0] - 1.3))
        scored.append((params["head"].copy(), score))
        return {"accuracy": score, "loss": -score}

    updates = [
        update(0, 10, {"text", "image"}, p_k=0.9, c_k=0.3),
        update(1, 40, {"text"}, p_k=0.2, c_k=-0.1, val_loss=2.0),
        update(2, 25, {"image"}, p_k=0.6, diversity=0.2, imbalance_ratio=0.9),
    ]
    # use_student=false: the output is the teacher's alone (the student still distils, its share is 0)
    cfg = FedMAPConfig(variant=variant, n_trials_per_round=6, entropy_coeff=0.0, use_student=False)
    strategy = FedMAP(cfg)
    strategy.setup(StrategyContext(evaluate_val=evaluate_val, metric="accuracy", seed=3))
    raw = client_features(updates, forced_modalities=variant == "original")
    x = torch.from_numpy(zscore(raw, cfg.z_clip))
    with torch.no_grad():
        before = torch.softmax(strategy.student(x), dim=0).numpy()
    out = strategy.aggregate(1, {"head": np.zeros(3, np.float32), "img": np.zeros(3, np.float32)}, updates)

    # The output is the teacher's: the best of the candidates, which are evaluated first.
    candidates = scored[: cfg.n_trials_per_round]
    best_head, best_score = max(candidates, key=lambda c: c[1])
    assert len({round(s, 9) for _, s in candidates}) > 1  # the candidates really differ
    np.testing.assert_array_equal(out["head"], best_head)
    assert strategy.round_metrics["teacher_score"] == best_score and strategy.round_metrics["beta"] == 0.0
    # The teacher's weights, read back from the record, and KL(teacher || student) before and after the step.
    teacher = np.array([strategy.round_metrics["weights"][c] for c in (0, 1, 2)])
    with torch.no_grad():
        after = torch.softmax(strategy.student(x), dim=0).numpy()
    assert kl(teacher, after) < kl(teacher, before)


@pytest.mark.parametrize("variant", ["fixed", "original"])
def test_self_scoring_client_metrics(variant):
    """The client's side: c_k within the round (after - before); grad_norm the mean over steps (fixed) or the last
    backward's (original, as the published client reads p.grad after training); the example count what it trained
    on (fixed) or its whole training set, the held-out slice included (original)."""
    import torch

    from fedmm.data.dataset import MultimodalDataset
    from fedmm.fl.instructions import FitInstructions
    from fedmm.fl.strategy.base import LocalRound
    from fedmm.fl.strategy.fedmap import SelfScoring

    data = MultimodalDataset(labels=np.array([0, 1] * 10), label_names=("a", "b"), texts=["x"] * 20)
    scores = iter([{"accuracy": 0.25, "loss": 2.0}, {"accuracy": 0.75, "loss": 0.5}])
    ins = FitInstructions(round=1, seed=0, lr=0.1, local_epochs=1, batch_size=4, weight_decay=0.0)
    run = LocalRound(0, None, data, None, ins, score=lambda d, metric: next(scores))
    hook = SelfScoring({"score_metric": "accuracy", "val_fraction": 0.1, "variant": variant})
    hook.before_training(run)
    assert len(run.train) == 18 and len(run.val) == 2
    p = torch.nn.Parameter(torch.zeros(2))
    for g in ([3.0, 4.0], [0.0, 1.0]):  # norms 5 and 1
        p.grad = torch.tensor(g)
        hook.on_step([p])
    hook.after_training(run)
    assert run.metrics["c_k"] == pytest.approx(0.5) and run.metrics["p_k"] == 0.75 and run.metrics["val_loss"] == 0.5
    assert run.metrics["grad_norm"] == pytest.approx(1.0 if variant == "original" else 3.0)
    assert run.num_examples == (20 if variant == "original" else None)
