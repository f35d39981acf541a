"""FedMAP's learned modality-aware aggregation (seed 000's `ModalityAwareAggregation`), with its config keys.

Per round:
1. Every client reports, besides its weights, what it measured on its own validation rows or, when it has none, a
   held-out slice of its own data (`SelfScoring`, the client side, below): score before (`f1_before`) and after
   (`p_k`) local training, the gain `c_k`, validation loss, mean gradient norm, label diversity and imbalance, its
   example count and its real modalities.
2. `client_features` builds the 10-column row per client; `zscore` standardises each column across the round's
   clients and clips at `z_clip`. A small MLP (the student) scores each row; a softmax over clients gives weights.
3. The teacher searches `n_trials_per_round` mixing vectors over 7 teacher features (`teacher_features`): each gives
   weights softmax(features @ mix) and a candidate global model, scored on the server's *validation* split. The
   first candidate is the previous round's best mix; the others are drawn from a flat Dirichlet by the run's seed.
4. The student takes one Adam step toward the teacher's weights: KL(teacher || student) - entropy_coeff * H(student).
5. The student's own weights are scored (one more evaluation), and `gate` blends teacher and student.

Every parameter is averaged over the clients that sent it (a client without images does not weigh on the image
encoder), with the blended weights renormalised over those clients.

Differences from the original, each on purpose: the real modality flags reach the server (the original defaults
them to 1); candidates are scored on the validation split, never the test split; the evaluations per round are
exactly `n_trials_per_round + 1` (reported as `strategy_evals`), all through the server's one model instance (no
Lipschitz probe evaluation); candidate mixes come from the run's seed rather than Optuna, so runs are reproducible;
and the whole state (student, its Adam moments, the gate's streak, the best mix) is checkpointed, so a resumed run
continues exactly. The student is also saved to `aggregator_path` after every round and loaded from there when a
new run starts, to carry a trained aggregator over to the next run.

`variant=original` follows the published FedOps code (`ModalityAwareAggregation` and its client) where fedmm's
rules differ on purpose; each difference is one function below (or a branch of one), listed in the README's table.
What stays fixed in both variants: candidates are scored on the validation split (the original scores on the
server's test-like data), every evaluation goes through the server's one model, a key a client did not send does not
weigh on its average, and the state is checkpointed for an exact resume.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from fedmm.errors import FedmmError
from fedmm.data.dataset import MultimodalDataset
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.strategy.base import STRATEGIES, ClientHook, LocalRound, Strategy, StrategyContext
from fedmm.fl.strategy.fedavg import masked_weighted_average
from fedmm.fl.update import Update
from fedmm.params import Params, atomic_write_bytes, bytes_metadata, params_from_bytes, params_to_bytes
from fedmm.fl.strategy.configs import FedMAPConfig

FEATURES = (
    "c_k",
    "p_k",
    "m_img",
    "m_txt",
    "n_k",
    "diversity",
    "modality_div",
    "val_loss",
    "grad_norm",
    "imbalance_ratio",
)
TEACHER_FEATURES = ("performance", "size", "diversity", "modality", "val_loss", "grad_norm", "balance")


# -- pure functions ---------------------------------------------------------------------------------------------


def client_features(updates: list[Update], forced_modalities: bool = False) -> np.ndarray:
    """The student's raw (K, 10) input, columns as in FEATURES. The modality flags come from the modalities the
    client really has; modality_div is 1.0 with both modalities and 0.5 with one. `forced_modalities` reproduces
    the original, whose server reads `int(metrics.get("m_img", 1) or 1)`: a 0 flag becomes 1, so every client
    counts as having both modalities."""
    rows = []
    for u in updates:
        m = u.metrics
        img, txt = float("image" in u.modalities), float("text" in u.modalities)
        if forced_modalities:
            img = txt = 1.0
        rows.append(
            [
                m.get("c_k", 0.0),
                m.get("p_k", 0.0),
                img,
                txt,
                float(u.num_examples),
                m.get("diversity", 0.0),
                1.0 if img and txt else 0.5,
                m.get("val_loss", 0.0),
                m.get("grad_norm", 0.0),
                m.get("imbalance_ratio", 0.0),
            ]
        )
    return np.nan_to_num(np.asarray(rows, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


ZSCORE_EPS = 1e-8  # the published `(x - mean) / (std + 1e-8)`


def zscore(x: np.ndarray, clip: float) -> np.ndarray:
    """Column-wise (x - mean) / (std + 1e-8) over clients (population std, a zero spread counting as 1), clipped
    to [-clip, clip], as the published `_nanmean_std_cols` / `_z_clip_1d`. The 1e-8 is a tolerance, not only a
    guard: a column whose values are equal but not exact in binary (0.1 three times has a 1e-17 spread) scores
    ~0 for every client, where dividing by the spread alone gives +-1."""
    std = x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return np.clip((x - x.mean(axis=0)) / (std + ZSCORE_EPS), -clip, clip)


def balance_feature(imbalance_ratio: np.ndarray, variant: str = "fixed") -> np.ndarray:
    """The teacher's balance column before z-scoring (larger is better). fixed: minus the most frequent label's
    share. original: 1 - 2|r - 0.5|, the published rule, made for a binary task's positive share (best at 0.5);
    applied to fedmm's r (the most frequent label's share) it ranks a client with r = 0.5 above a balanced one."""
    r = np.asarray(imbalance_ratio, dtype=np.float64)
    return 1.0 - 2.0 * np.abs(r - 0.5) if variant == "original" else -r


def teacher_features(raw: np.ndarray, perf_mix_lambda: float, clip: float, variant: str = "fixed") -> np.ndarray:
    """The (K, 7) teacher features, columns as in TEACHER_FEATURES; larger is better in every column."""
    col = {name: raw[:, i] for i, name in enumerate(FEATURES)}

    def z(v: np.ndarray) -> np.ndarray:
        return zscore(v[:, None], clip)[:, 0]

    perf = perf_mix_lambda * col["p_k"] + (1 - perf_mix_lambda) * np.maximum(col["c_k"], 0.0)
    return np.stack(
        [
            z(perf),
            z(np.log(np.maximum(col["n_k"], 1.0))),
            z(col["diversity"]),
            z(col["modality_div"]),
            -z(col["val_loss"]),
            -z(col["grad_norm"]),
            z(balance_feature(col["imbalance_ratio"], variant)),
        ],
        axis=1,
    )


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def candidate_mixes(previous: np.ndarray, n: int, seed: int, rnd: int) -> np.ndarray:
    """`n` mixing vectors on the simplex: the previous best first, then flat-Dirichlet draws (pure of seed, round)."""
    rng = np.random.default_rng([seed, rnd, 7])
    draws = rng.dirichlet(np.ones(len(previous)), size=max(n - 1, 0))
    return np.concatenate([previous[None, :], draws])[:n]


def original_candidate_mixes(n: int, seed: int, rnd: int) -> np.ndarray:
    """The original's candidates: a fresh Optuna study per round whose `n` trials (fewer than TPE's 10 start-up
    trials) each draw 7 independent uniform [0, 1] numbers, normalised to sum 1. Drawn here from the run's seed so
    that a run is reproducible; no candidate carries over from the previous round."""
    draws = np.random.default_rng([seed, rnd, 13]).uniform(0.0, 1.0, size=(n, len(TEACHER_FEATURES)))
    return draws / draws.sum(axis=1, keepdims=True)


def search_score(metrics: dict[str, float], task_metric: str, variant: str = "fixed") -> float:
    """What the teacher's search maximises. fixed: the task's first metric. original: what the published server
    reads, `metrics.get("test_f1_macro", metrics.get("accuracy"))`, where the published MM-IMDb `test_torch` puts
    the F1 of the tp/fp/fn pooled over all labels and examples under `test_f1_macro`: that is fedmm's `micro_f1`
    (the name says macro; the code computes micro). A single-label task's `accuracy` is next; where the task has
    neither (VQA accuracy) the original would score every candidate 0 and keep the first, so the task's metric is
    used instead."""
    if variant == "original":
        for name in ("micro_f1", "accuracy"):
            if name in metrics:
                return float(metrics[name])
    return float(metrics[task_metric])


def distill_loss(
    teacher: torch.Tensor, logp: torch.Tensor, entropy_coeff: float, variant: str = "fixed"
) -> torch.Tensor:
    """KL(teacher || student) - entropy_coeff * H(student). The original computes the KL with
    `nn.KLDivLoss(reduction="batchmean")` on the K clients' 1-D row, which divides it by K."""
    kl_ts = torch.sum(teacher * (torch.log(teacher.clamp_min(1e-12)) - logp))
    if variant == "original":
        kl_ts = kl_ts / len(teacher)
    return kl_ts + entropy_coeff * torch.sum(logp.exp() * logp)


def kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)
    return float(np.sum(p * (np.log(p) - np.log(q))))


def gate(
    rnd: int,
    teacher: np.ndarray,
    student: np.ndarray,
    teacher_score: float,
    student_score: float,
    streak: int,
    cfg: FedMAPConfig,
) -> tuple[float, int, bool, str]:
    """The student's share beta of the final weights (1 - beta) * teacher + beta * student, the new streak, whether
    the student passed, and which branch decided, as the round metrics name it: teacher_only (the student disabled),
    warmup (capped at 0.25), student (dominating after its streak), trust_region (beta_kl) or capped (at 0.25).

    The student passes a round when its weights score at least teacher_score - gate_delta; `streak` counts passes
    in a row. beta_kl = min(1, gate_eta / sqrt(2 KL(teacher || student))) is a trust region: the further the
    student is from the teacher, the smaller the step toward it. Then:
      - use_student false: beta = 0 (teacher only);
      - rounds 1..student_warmup: beta = min(0.25, beta_kl);
      - streak >= student_win_needed: beta = max(0.6, beta_kl) (the student dominates);
      - otherwise: beta = beta_kl if the student passed this round, else min(0.25, beta_kl).
    """
    passed = student_score >= teacher_score - cfg.gate_delta
    streak = streak + 1 if passed else 0
    d = math.sqrt(max(2.0 * kl(teacher, student), 1e-16))
    beta_kl = min(1.0, cfg.gate_eta / d)
    if not cfg.use_student:
        return 0.0, streak, passed, "teacher_only"
    if rnd <= cfg.student_warmup:
        return min(0.25, beta_kl), streak, passed, "warmup"
    if streak >= cfg.student_win_needed:
        return max(0.6, beta_kl), streak, passed, "student"
    return (beta_kl, streak, passed, "trust_region") if passed else (min(0.25, beta_kl), streak, passed, "capped")


PROBE_STEP = 0.1  # the original's Lipschitz probe: weights 0.9 teacher + 0.1 student


def lipschitz_tau(teacher_score: float, probe_score: float, l1_step: float, delta: float) -> float:
    """The original's KL budget tau = 0.5 (delta / L)^2 (Pinsker + Lipschitz), L the score's change per unit of
    L1 distance measured by the probe step toward the student."""
    lipschitz = abs(probe_score - teacher_score) / max(l1_step, 1e-8)
    return 0.5 * (delta / max(lipschitz, 1e-8)) ** 2


def gate_original(
    rnd: int,
    teacher: np.ndarray,
    student: np.ndarray,
    teacher_score: float,
    student_score: float,
    tau: float,
    streak: int,
    cfg: FedMAPConfig,
) -> tuple[float, int, bool, str]:
    """The published gate: as `gate`, except that the student passes only when also KL(teacher || student) <= tau;
    the warm-up covers rounds 1..student_warmup-1 (`server_round < warmup`); and outside warm-up and streak the
    trust-region step beta_kl is taken when KL <= tau (else capped at 0.25), whether or not the student scored."""
    kl_ts = kl(teacher, student)
    beta_kl = min(1.0, cfg.gate_eta / math.sqrt(max(2.0 * kl_ts, 1e-16)))
    passed = student_score >= teacher_score - cfg.gate_delta and kl_ts <= tau
    streak = streak + 1 if passed else 0
    if not cfg.use_student:
        return 0.0, streak, passed, "teacher_only"
    if rnd < cfg.student_warmup:
        return min(0.25, beta_kl), streak, passed, "warmup"
    if streak >= cfg.student_win_needed:
        return max(0.6, beta_kl), streak, passed, "student"
    return (beta_kl, streak, passed, "trust_region") if kl_ts <= tau else (min(0.25, beta_kl), streak, passed, "capped")


class AggregatorMLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))).view(-1)


def local_split(
    data: MultimodalDataset, fraction: float, seed: int, cid: int
) -> tuple[MultimodalDataset, MultimodalDataset | None]:
    """(train, val): a fixed `fraction` of the client's examples held out for its own scoring, the same in every
    round. Clients too small to spare two examples keep everything for training and report no scores."""
    n_val = int(round(fraction * len(data)))
    if n_val < 1 or len(data) - n_val < 2:
        return data, None
    order = np.random.default_rng([seed, cid, 11]).permutation(len(data))
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))


def label_statistics(data: MultimodalDataset, variant: str = "fixed") -> dict[str, float]:
    """fixed: diversity = entropy of the label distribution over log(number of labels), 1 = uniform;
    imbalance_ratio = the most frequent label's share, from 1 / labels (balanced) to 1 (a single label).
    original, as the published MM-IMDb client (`flclient_patch.py`): no diversity (it never sends one, so the server
    reads 0), and imbalance_ratio = the mean over examples of the multi-hot label vector's mean, i.e. the share of
    positive entries (a single-label example's one-hot vector: 1 / labels)."""
    if variant == "original":
        if not len(data.labels):
            return {"diversity": 0.0, "imbalance_ratio": 0.0}
        positive_rate = float(data.labels.mean()) if data.multilabel else 1.0 / max(data.num_labels, 1)
        return {"diversity": 0.0, "imbalance_ratio": positive_rate}
    counts = data.label_counts().astype(np.float64)
    if counts.sum() <= 0 or len(counts) < 2:
        return {"diversity": 0.0, "imbalance_ratio": 1.0}
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"diversity": float(-(nz * np.log(nz)).sum() / np.log(len(p))), "imbalance_ratio": float(p.max())}


# -- the client side --------------------------------------------------------------------------------------------


class SelfScoring(ClientHook):
    """What a FedMAP client measures besides training: its score on its own validation rows (or, without any, a
    held-out `val_fraction` of its data, not trained on) before and after training (c_k = after - before, within the
    round, as both published clients compute it), a gradient norm and its label statistics.

    The gradient norm: fixed, the mean over the round's optimizer steps of the L2 norm of all gradients; original,
    the norm of the gradients the last backward pass left (the published client reads `p.grad` after training).
    The example count: fixed, what it trained on; original, its whole training set, the held-out slice included
    (the published client reports `len(train_loader.dataset)`)."""

    def before_training(self, run: LocalRound) -> None:
        self.metric = str(self.options["score_metric"])
        self.variant = str(self.options.get("variant", "fixed"))
        self.steps, self.norm_sum, self.last_norm = 0, 0.0, 0.0
        if self.variant == "original":
            run.num_examples = len(run.train)
        if run.val is None:
            run.train, run.val = local_split(
                run.train, float(self.options["val_fraction"]), run.instructions.seed, run.cid
            )
        if run.val is not None:
            run.metrics["f1_before"] = run.score(run.val, self.metric)[self.metric]

    def on_step(self, params: list[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        self.last_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item() if grads else 0.0
        self.norm_sum += self.last_norm
        self.steps += 1

    def after_training(self, run: LocalRound) -> None:
        original = self.variant == "original"
        run.metrics["grad_norm"] = self.last_norm if original else self.norm_sum / max(self.steps, 1)
        run.metrics.update(label_statistics(run.train, self.variant))
        if run.val is not None:
            after = run.score(run.val, self.metric)
            run.metrics.update(
                p_k=after[self.metric], c_k=after[self.metric] - run.metrics["f1_before"], val_loss=after["loss"]
            )


# -- the strategy -----------------------------------------------------------------------------------------------


@STRATEGIES.register("fedmap", FedMAPConfig)
class FedMAP(Strategy):
    cfg: FedMAPConfig
    client_hook = SelfScoring

    def __init__(self, cfg: FedMAPConfig):
        if cfg.input_dim != len(FEATURES):
            raise FedmmError(
                f"strategy.input_dim must be {len(FEATURES)}, the number of client features "
                f"({', '.join(FEATURES)}); got {cfg.input_dim}"
            )
        if cfg.n_trials_per_round < 1:
            raise FedmmError(f"strategy.n_trials_per_round must be >= 1 (got {cfg.n_trials_per_round})")
        if not 0 < cfg.client_val_fraction < 1:
            raise FedmmError(f"strategy.client_val_fraction must be in (0, 1) (got {cfg.client_val_fraction})")
        super().__init__(cfg)
        self.streak = 0
        self.best_mix = np.full(len(TEACHER_FEATURES), 1.0 / len(TEACHER_FEATURES))
        self.path: Optional[Path] = None
        self._evals = 0  # server evaluations this round: n_trials + 1 (original: + 2, with the probe)
        self._build(seed=0)

    def _build(self, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.student = AggregatorMLP(self.cfg.input_dim, self.cfg.hidden_dim).double()
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=self.cfg.aggregator_lr)

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        if ctx.evaluate_val is None:
            raise FedmmError("strategy=fedmap needs the server's validation split; use a task that has one")
        self._build(seed=ctx.seed)
        path = self.cfg.aggregator_path or (str(ctx.run_dir / "aggregator.safetensors") if ctx.run_dir else "")
        self.path = Path(path).expanduser() if path else None
        if self.path is not None and self.path.exists():
            self._load_file(self.path)

    def configure(self, rnd: int, client_ids: list[int], base: FitInstructions) -> dict[int, FitInstructions]:
        return self.ask(
            client_ids,
            base,
            val_fraction=self.cfg.client_val_fraction,
            score_metric=self.ctx.metric,
            variant=self.cfg.variant,
        )

    def _score(self, global_params: Params, updates: list[Update], weights: np.ndarray) -> tuple[Params, float]:
        params = masked_weighted_average(global_params, [(u.params, float(w)) for u, w in zip(updates, weights)])
        self._evals += 1
        return params, search_score(self.ctx.evaluate_val(params), self.ctx.metric, self.cfg.variant)

    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        cfg, original = self.cfg, self.cfg.variant == "original"
        self._evals = 0
        raw = client_features(updates, forced_modalities=original)
        x = torch.from_numpy(zscore(raw, cfg.z_clip))
        tf = teacher_features(raw, cfg.perf_mix_lambda, cfg.z_clip, cfg.variant)

        # Teacher: the best of n candidate mixes, scored on the validation split.
        mixes = (
            original_candidate_mixes(cfg.n_trials_per_round, self.ctx.seed, rnd)
            if original
            else candidate_mixes(self.best_mix, cfg.n_trials_per_round, self.ctx.seed, rnd)
        )
        best = (-math.inf, None, None, None)
        for mix in mixes:
            w = softmax(tf @ mix)
            params, score = self._score(global_params, updates, w)
            if score > best[0]:
                best = (score, w, mix, params)
        teacher_score, teacher, self.best_mix, teacher_params = best

        # Student: one distillation step toward the teacher, then its own weights get one evaluation.
        logp = torch.log_softmax(self.student(x), dim=0)
        loss = distill_loss(torch.from_numpy(teacher), logp, cfg.entropy_coeff, cfg.variant)
        snapshot = self._student_state()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if not all(torch.isfinite(p).all() for p in self.student.parameters()):  # never keep a broken aggregator
            self._load_student_state(snapshot)
        with torch.no_grad():
            student = torch.softmax(self.student(x), dim=0).numpy()
        student_params, student_score = self._score(global_params, updates, student)

        extra: dict[str, float] = {}
        if original:  # the Lipschitz probe: one more evaluation, a small step from the teacher toward the student
            probe = (1 - PROBE_STEP) * teacher + PROBE_STEP * student
            _, probe_score = self._score(global_params, updates, probe)
            tau = lipschitz_tau(teacher_score, probe_score, float(np.abs(probe - teacher).sum()), cfg.gate_delta)
            beta, self.streak, passed, branch = gate_original(
                rnd, teacher, student, teacher_score, student_score, tau, self.streak, cfg
            )
            extra = {"probe_score": probe_score, "tau": tau, "kl": kl(teacher, student)}
        else:
            beta, self.streak, passed, branch = gate(
                rnd, teacher, student, teacher_score, student_score, self.streak, cfg
            )
        final = (1 - beta) * teacher + beta * student
        if beta == 0.0:
            out = teacher_params
        elif beta == 1.0:
            out = student_params
        else:
            out = masked_weighted_average(global_params, [(u.params, float(w)) for u, w in zip(updates, final)])
        self.round_metrics = {
            "evals": self._evals,
            "teacher_score": teacher_score,
            "student_score": student_score,
            "beta": beta,
            "gate": branch,
            "student_passed": passed,
            "streak": self.streak,
            "distill_loss": float(loss.item()),
            **extra,
            "weights": {u.client_id: round(float(w), 9) for u, w in zip(updates, final)},
        }
        if self.path is not None:
            self._save_file(self.path)
        return out

    # -- state: checkpoints (exact resume) and the aggregator file (warm start of a new run) --------------------
    def _student_state(self) -> dict[str, np.ndarray]:
        arrays = {f"mlp.{k}": v.detach().numpy().copy() for k, v in self.student.state_dict().items()}
        names = dict((id(p), n) for n, p in self.student.named_parameters())
        for p, st in self.optimizer.state.items():
            for k, v in st.items():
                arrays[f"adam.{names[id(p)]}.{k}"] = np.asarray(v.detach().numpy() if torch.is_tensor(v) else v)
        return arrays

    def _load_student_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.student.load_state_dict(
            {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("mlp.")}
        )
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=self.cfg.aggregator_lr)
        for n, p in self.student.named_parameters():
            st = {
                k[len(f"adam.{n}.") :]: torch.from_numpy(np.array(v))
                for k, v in arrays.items()
                if k.startswith(f"adam.{n}.")
            }
            if st:
                self.optimizer.state[p] = st

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self._student_state(),
            "streak": self.streak,
            "best_mix": self.best_mix.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self._load_student_state(state["student"])
        self.streak = int(state["streak"])
        self.best_mix = np.asarray(state["best_mix"], dtype=np.float64)

    def _save_file(self, path: Path) -> None:
        if path.suffix == ".pth":  # the original's format, so that its code can warm-start from fedmm's student
            buf = io.BytesIO()
            torch.save({k: v.detach().float() for k, v in self.student.state_dict().items()}, buf)
            atomic_write_bytes(path, buf.getvalue())
            return
        meta = {"fedmm_fedmap": json.dumps({"streak": self.streak, "best_mix": self.best_mix.tolist()})}
        atomic_write_bytes(path, params_to_bytes(self._student_state(), meta))

    def _load_file(self, path: Path) -> None:
        def refuse(why: str) -> FedmmError:
            return FedmmError(
                f"cannot load the FedMAP aggregator {path} ({why}); delete it or set strategy.aggregator_path to "
                f"another file"
            )

        if path.suffix == ".pth":
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise refuse(f"{type(e).__name__}: {e}") from None
            self.student.load_state_dict(original_student_state(state, self.student, refuse))
            return
        data = path.read_bytes()
        try:
            arrays, meta = params_from_bytes(data), json.loads(bytes_metadata(data)["fedmm_fedmap"])
            self._load_student_state(arrays)
        except Exception as e:
            raise refuse(f"{type(e).__name__}: {e}") from None
        self.best_mix = np.asarray(meta["best_mix"], dtype=np.float64)


def original_student_state(state: Any, student: nn.Module, refuse: Any) -> dict[str, torch.Tensor]:
    """The original's `torch.save(aggregator.state_dict())` (fc1.weight, fc1.bias, fc2.weight, fc2.bias, float32,
    optionally under DataParallel's `module.` prefix) mapped onto fedmm's student (the same layout, in float64)."""
    if not isinstance(state, dict):
        raise refuse(f"a {type(state).__name__}, not a state dict")
    mine = student.state_dict()
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    if set(state) != set(mine):
        raise refuse(f"its keys {sorted(state)} are not the aggregator's {sorted(mine)}")
    for k, v in mine.items():
        if not torch.is_tensor(state[k]) or tuple(state[k].shape) != tuple(v.shape):
            shape = tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__
            raise refuse(
                f"{k} has shape {shape}, this aggregator's is {tuple(v.shape)}; strategy.hidden_dim sets its hidden "
                f"size"
            )
    return {k: state[k].to(v.dtype) for k, v in mine.items()}
