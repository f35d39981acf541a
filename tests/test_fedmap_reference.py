"""FedMAP `variant=original` against the original code: the published FedOps server (`fedops==1.1.30.19`,
`fedops/server/fedmap/strategy.py`, `ModalityAwareAggregation`) imported unchanged as a library, fed the same rounds
as fedmm's `FedMAP`, must agree on the aggregate, the final weights, the teacher's and the student's scores, the
student aggregator after its Adam step, and the gate's decision, in every round.

Only Optuna is replaced: by a stub whose trials hand out the draws fedmm's `original_candidate_mixes` makes (the
published study's first 10 trials are TPE's independent uniform start-up draws, so a run of at most 10 trials per
round is uniform draws, normalised). Both sides score candidates with a real multilabel classifier (a linear layer)
on fixed data: the published side the way its MM-IMDb `test_torch` does (F1 of the pooled tp / fp / fn under the
key `test_f1_macro`, through FedOps' `{"accuracy": f1, **metrics}`), fedmm's through `fedmm.metrics.compute`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmm.fl.strategy import StrategyContext
from fedmm.fl.strategy.fedmap import FedMAP, FedMAPConfig, original_candidate_mixes
from fedmm.fl.update import Update
from fedmm.metrics import compute

SEED, LABELS, DIM, ROWS, TRIALS, WARMUP = 3, 5, 8, 96, 4, 3
KEYS = ("w", "b")


def published_module(monkeypatch, draws: dict[int, np.ndarray]):
    """fedops' FedMAP strategy module, loaded from the installed package's file (its package `__init__` imports
    FedOps' whole server stack), with a stub `optuna` whose study for round r hands out `draws[r]`."""
    spec = importlib.util.find_spec("fedops")
    assert spec is not None and spec.origin, "fedops==1.1.30.19 is a dev dependency (requirements-nodeps.lock)"
    path = Path(spec.origin).parent / "server" / "fedmap" / "strategy.py"

    class TrialPruned(Exception):
        pass

    class Trial:
        def __init__(self, values):
            self.values = iter(values)

        def suggest_float(self, name, low, high):
            assert (low, high) == (0.0, 1.0)
            return float(next(self.values))

    class Study:
        def __init__(self):
            self.round = current["round"]

        def optimize(self, objective, n_trials):
            for values in draws[self.round][:n_trials]:
                try:
                    objective(Trial(values))
                except TrialPruned:
                    pass

    current = {"round": 0}
    optuna = types.ModuleType("optuna")
    optuna.TrialPruned = TrialPruned
    optuna.create_study = lambda direction: Study()
    monkeypatch.setitem(sys.modules, "optuna", optuna)
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("fedops_fedmap_strategy", path))
    module.__spec__.loader.exec_module(module)
    return module, current


def raw_draws(n: int, seed: int, rnd: int) -> np.ndarray:
    """The uniform draws behind `original_candidate_mixes` (which normalises them, as the published objective does)."""
    return np.random.default_rng([seed, rnd, 13]).uniform(0.0, 1.0, size=(n, 7))


def published_f1(logits: np.ndarray, labels: np.ndarray) -> float:
    """The published MM-IMDb `test_torch`'s F1: sigmoid >= 0.5, tp / fp / fn pooled over labels and examples."""
    preds = 1.0 / (1.0 + np.exp(-logits)) >= 0.5
    tp = int((preds & (labels == 1)).sum())
    fp = int((preds & (labels == 0)).sum())
    fn = int((~preds & (labels == 1)).sum())
    prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return (2 * prec * rec) / max(prec + rec, 1e-8)


def rounds(n_rounds: int):
    """Per round: the clients taking part (of 6; client 4 has no images), their parameters and the metrics they
    report. Some rounds' clients are close to each other (the student can match the teacher), others far apart;
    one round reports a constant val_loss column (0.1 each: equal but not exact in binary)."""
    rng = np.random.default_rng(11)
    center = {
        "w": rng.normal(0, 1, (LABELS, DIM)).astype(np.float32),
        "b": rng.normal(0, 0.5, LABELS).astype(np.float32),
    }
    for rnd in range(1, n_rounds + 1):
        members = sorted(rng.choice(6, size=int(rng.integers(3, 6)), replace=False).tolist())
        spread = 0.02 if rnd % 5 in (1, 2, 3) else 1.5
        updates = []
        for cid in members:
            params = {k: (v + rng.normal(0, spread, v.shape)).astype(np.float32) for k, v in center.items()}
            metrics = {
                "c_k": float(rng.normal(0.02, 0.05)),
                "p_k": float(rng.uniform(0.2, 0.7)),
                "val_loss": 0.1 if rnd == 7 else float(rng.uniform(0.3, 0.9)),
                "grad_norm": float(rng.uniform(0.1, 3.0)),
                "imbalance_ratio": float(rng.uniform(0.1, 0.9)),  # both sides of the balance rule's 0.5
                "diversity": float(rng.uniform(0.0, 1.0)),
            }
            modalities = frozenset({"text"} if cid == 4 else {"image", "text"})
            updates.append(Update(cid, params, int(rng.integers(20, 400)), metrics, modalities))
        yield rnd, updates


def fit_results(updates: list[Update]):
    """The same updates as the published server receives them: Flower FitRes with ndarrays and the client's
    metrics (the modality flags as an honest client sends them; the published server reads a 0 as 1)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    out = []
    for u in updates:
        flags = {"m_img": int("image" in u.modalities), "m_txt": int("text" in u.modalities)}
        res = FitRes(
            Status(Code.OK, ""),
            ndarrays_to_parameters([u.params[k] for k in KEYS]),
            u.num_examples,
            {**u.metrics, **flags},
        )
        out.append((None, res))
    return out


# The published gate's decisions (its printed `decision`) and fedmm's names for them.
DECISIONS = {
    "teacher-dominant (warmup)": "warmup",
    "student-dominant (passed gate)": "student",
    "student/blend (KL small)": "trust_region",
    "teacher-dominant (KL large)": "capped",
}


def test_variant_original_agrees_with_the_published_fedmap_server(tmp_path, monkeypatch, capsys):
    n_rounds = 18
    draws = {rnd: raw_draws(TRIALS, SEED, rnd) for rnd in range(1, n_rounds + 1)}
    assert np.allclose(draws[2] / draws[2].sum(1, keepdims=True), original_candidate_mixes(TRIALS, SEED, 2))
    module, current = published_module(monkeypatch, draws)

    data_rng = np.random.default_rng(5)
    x = data_rng.normal(0, 1, (ROWS, DIM)).astype(np.float32)
    y = (data_rng.uniform(size=(ROWS, LABELS)) < 0.35).astype(np.float32)

    def logits(params) -> np.ndarray:
        return x @ params["w"].T + params["b"]

    def evaluate_published(server_round, nds, config):
        f1 = published_f1(logits(dict(zip(KEYS, nds))), y)
        return 0.0, {"accuracy": f1, "test_f1_macro": f1}

    def evaluate_fedmm(params):
        return {**compute(("macro_f1", "micro_f1"), logits(params), y), "loss": 0.0}

    # One initial student for both: the published code loads it from aggregator_path when the file exists.
    torch.manual_seed(0)
    init = module.AggregatorMLP(10, 16).state_dict()
    torch.save(init, tmp_path / "published.pth")
    torch.save(init, tmp_path / "fedmm.pth")
    monkeypatch.setenv("FEDMAP_STUDENT_WARMUP", str(WARMUP))
    published = module.ModalityAwareAggregation(
        evaluate_fn=evaluate_published, aggregator_path=str(tmp_path / "published.pth"), n_trials_per_round=TRIALS
    )
    cfg = FedMAPConfig(
        variant="original",
        n_trials_per_round=TRIALS,
        student_warmup=WARMUP,
        aggregator_path=str(tmp_path / "fedmm.pth"),
    )
    ours = FedMAP(cfg)
    # metric: the task's first metric is macro_f1 here, so that reading micro-F1 is the variant's doing
    ours.setup(StrategyContext(evaluate_val=evaluate_fedmm, metric="macro_f1", seed=SEED))
    np.testing.assert_array_equal(ours.student.fc1.weight.detach().numpy(), init["fc1.weight"].numpy())

    seen = []
    global_params = {k: np.zeros_like(v) for k, v in next(iter(rounds(1)))[1][0].params.items()}
    for rnd, updates in rounds(n_rounds):
        capsys.readouterr()
        current["round"] = rnd
        parameters, _ = published.aggregate_fit(rnd, fit_results(updates), [])
        printed = capsys.readouterr().out
        from flwr.common import parameters_to_ndarrays

        theirs = parameters_to_ndarrays(parameters)
        mine = ours.aggregate(rnd, global_params, updates)
        m = ours.round_metrics

        for k, v in zip(KEYS, theirs):  # the aggregate
            np.testing.assert_allclose(mine[k], v, rtol=1e-5, atol=1e-6, err_msg=f"round {rnd}: {k}")
        # the final weights, recovered from the published aggregate (the clients' parameters are independent)
        stack = np.stack([np.concatenate([u.params[k].ravel() for k in KEYS]) for u in updates], axis=1)
        weights, *_ = np.linalg.lstsq(stack.astype(np.float64), np.concatenate([t.ravel() for t in theirs]), rcond=None)
        np.testing.assert_allclose([m["weights"][u.client_id] for u in updates], weights, atol=2e-5)
        # the scores and the gate's decision, as the published code prints them
        t_score, s_score = map(float, re.search(r"Teacher score=(\S+) \| Student score=(\S+)", printed).groups())
        assert (m["teacher_score"], m["student_score"]) == (
            pytest.approx(t_score, abs=1e-6),
            pytest.approx(s_score, abs=1e-6),
        )
        decision = re.search(r"→ (.+)$", printed, re.M).group(1)
        assert m["gate"] == DECISIONS[decision], f"round {rnd}: {printed}"
        # the student after its distillation step, as the published code saved it. fc2.bias is left out: a softmax
        # over clients does not depend on it, so its gradient is rounding noise (~1e-9 in the original's float32,
        # ~1e-17 in fedmm's float64) that Adam's normalised step turns into moves of up to lr.
        saved = torch.load(tmp_path / "published.pth", weights_only=True)
        for k, v in ours.student.state_dict().items():
            if k == "fc2.bias":
                continue
            np.testing.assert_allclose(v.numpy(), saved[k].numpy(), rtol=1e-4, atol=1e-6, err_msg=f"round {rnd}: {k}")
        seen.append(m["gate"])
        global_params = mine

    assert set(seen) == set(DECISIONS.values()), seen  # every branch of the gate was reached
