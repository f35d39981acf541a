"""Client-level differential privacy: DP-FedAvg (McMahan et al., 2018, "Learning Differentially Private Recurrent
Language Models"), with the privacy spent counted by Google's `dp-accounting` library.

One round of DP-FedAvg, and what this module does for each step:

1. Clients are sampled by Poisson sampling, each independently with probability q = clients_per_round /
   num_clients (`sample`): the sampling the accountant's `PoissonSampledDpEvent` describes. With q = 1 every client
   takes part and the round is a plain Gaussian mechanism.
2. Each update's delta (what the client changed, over all its travelling tensors) is clipped to L2 norm
   `clip_norm` = C (`clip_delta`): one client's contribution to the sum is then bounded by C, whatever its data.
   *Central* mode: the server clips. *Local* mode: the client clips before sending.
3. Gaussian noise with std z * C is added to the sum of clipped deltas. Central: the server draws it. Local
   (distributed DP): each of the m sampled clients adds its share, std z * C / sqrt(m) (`local_noise_std`), so that
   only the sum carries the full noise, which is what secure aggregation needs; a client that drops out takes its
   share away, and the round is accounted with the noise that really arrived (`Accountant.noise_in_sum`).
4. The noised sum is divided by the *expected* number of clients q * num_clients, never by the number that replied
   or by example counts (`release`): a fixed denominator keeps one client's influence at C / (q * N) (the
   "fixed-denominator estimator" of the paper); weights by example counts would let a client's data size, itself
   private, steer the result.

The result, the noised mean delta, is handed to the strategy as one update: strategies that only average
(FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) then post-process it, which costs no privacy.

Accounting: the neighbouring relation is add-or-remove one client (all of that client's data), the sensitivity C.
Every round composes one `PoissonSampledDpEvent(q, GaussianDpEvent(z))` in an RDP accountant; `epsilon` is reported
at `delta`. No formula is written here: the events go to the library.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from fedmm.fl.update import Update
from fedmm.params import Params


def _floats(params: Params) -> list[str]:
    return [k for k, v in params.items() if np.issubdtype(v.dtype, np.floating)]


def clip_delta(params: Params, global_params: Params, clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """The float64 delta params - global over every floating key of `global_params` (a key the client did not send
    counts as unchanged), scaled down to L2 norm `clip_norm` when longer; and its norm before clipping."""
    delta = {
        k: params[k].astype(np.float64) - global_params[k].astype(np.float64)
        if k in params
        else np.zeros(global_params[k].shape)
        for k in _floats(global_params)
    }
    norm = math.sqrt(sum(float(np.dot(d.ravel(), d.ravel())) for d in delta.values()))
    if norm > clip_norm:
        factor = clip_norm / norm
        delta = {k: d * factor for k, d in delta.items()}
    return delta, norm


def add_noise(values: dict[str, np.ndarray], std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`values` plus independent N(0, std^2) noise on every entry (in float64), drawn in sorted key order: the same
    generator gives the same noise however the tensors are ordered (a checkpoint stores them sorted)."""
    return {k: values[k] + rng.normal(0.0, std, size=values[k].shape) for k in sorted(values)} if std > 0 else values


def privatize(
    params: Params, global_params: Params, clip_norm: float, noise_std: float, rng: np.random.Generator
) -> Params:
    """A client's update in local mode: its delta clipped to `clip_norm` and noised with its share `noise_std`, as
    parameters (global + noised delta, in the global dtypes) for *every* floating key: a key the client did not
    train carries noise too, or the clients that did would share less noise on it than the accountant assumes."""
    delta, _ = clip_delta(params, global_params, clip_norm)
    noised = add_noise(delta, noise_std, rng)
    return {k: (global_params[k].astype(np.float64) + d).astype(global_params[k].dtype) for k, d in noised.items()}


def local_noise_std(noise_multiplier: float, clip_norm: float, sampled: int) -> float:
    """Each of `sampled` clients' share of the noise, so that the sum of the shares has std z * C."""
    return noise_multiplier * clip_norm / math.sqrt(max(sampled, 1))


def sample(num_clients: int, rate: float, seed: int, rnd: int) -> list[int]:
    """Poisson sampling: every client independently with probability `rate` (all of them at rate 1), a pure function
    of (seed, round) like fedmm's fixed-size sampling, so that a resumed run samples as the original did."""
    if rate >= 1.0:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, rnd, 211])
    return [int(c) for c in np.flatnonzero(rng.random(num_clients) < rate)]


@dataclass
class Summed:
    """A round's contributions summed: what DP releases from, and all that a secure-aggregation runtime lets the
    server see. `delta_sum` is the sum of the clients' weighted deltas (float64, every floating key) and `weight`
    the sum of their weights (their example counts; 1 each under DP)."""

    delta_sum: dict[str, np.ndarray]
    weight: float
    clients: list[int] = field(default_factory=list)  # who contributed, in order
    num_examples: int = 0
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # each contributor's plaintext metrics
    failures: dict[int, str] = field(default_factory=dict)
    bytes_up: int = 0

    def mean_update(self, global_params: Params) -> Update:
        """The weighted mean delta as one update (global + mean) for the strategy."""
        return as_update(global_params, {k: v / self.weight for k, v in self.delta_sum.items()}, self.num_examples)


def as_update(global_params: Params, delta: dict[str, np.ndarray], num_examples: int) -> Update:
    """global + delta (non-floating keys unchanged) as one `Update` of weight `num_examples` (client id -1: the
    round's aggregate, no one client's)."""
    params = dict(global_params)
    for k, d in delta.items():
        params[k] = (global_params[k].astype(np.float64) + d).astype(global_params[k].dtype)
    return Update(client_id=-1, params=params, num_examples=max(1, num_examples))


def clipped_sum(
    updates: Iterable[Update],
    global_params: Params,
    clip_norm: Optional[float],
    clipped: Optional[dict[int, float]] = None,
) -> Summed:
    """The unweighted sum of the updates' deltas, each clipped to `clip_norm` first (None: local mode, where the
    clients clipped and noised already and the server must not touch the noise). The norms of the deltas that were
    clipped go to `clipped` (client id -> norm), which tells a user whether C is too small."""
    keys = _floats(global_params)
    total = Summed({k: np.zeros(global_params[k].shape) for k in keys}, 0.0)
    for u in updates:
        delta, norm = clip_delta(u.params, global_params, clip_norm if clip_norm is not None else math.inf)
        if clipped is not None and clip_norm is not None and norm > clip_norm:
            clipped[u.client_id] = norm
        for k in keys:
            total.delta_sum[k] += delta[k]
        total.weight += 1.0
        total.clients.append(u.client_id)
        total.num_examples += u.num_examples
    return total


# ----------------------------------------------------------------------------------------------- accounting


def _round_event(rate: float, noise_multiplier: float):
    import dp_accounting

    if noise_multiplier <= 0:
        return dp_accounting.NonPrivateDpEvent()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return gaussian if rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(rate, gaussian)


def epsilon(rounds: Sequence[tuple[float, float]], delta: float) -> float:
    """The epsilon at `delta` after the given rounds, each (sampling rate, noise multiplier), by dp-accounting's RDP
    accountant (add-or-remove-one neighbours). A round with multiplier 0 released an un-noised sum: infinite."""
    if not rounds:
        return 0.0
    from dp_accounting import SelfComposedDpEvent
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    with _quiet_accountant():
        for (rate, z), count in Counter(rounds).items():
            accountant.compose(SelfComposedDpEvent(_round_event(rate, z), count))
        return float(accountant.get_epsilon(delta))


@contextmanager
def _quiet_accountant():
    """dp-accounting logs (through absl) every RDP order whose series it cannot sum and so leaves out, which makes
    the bound only safer; on a terminal that is a screenful per round."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def noise_for_epsilon(target_epsilon: float, rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 1e-4) with which `rounds` rounds at sampling `rate` spend at most
    `target_epsilon` at `delta`, solved by dp-accounting's `calibrate_dp_mechanism`."""
    from dp_accounting import SelfComposedDpEvent, calibrate_dp_mechanism
    from dp_accounting.mechanism_calibration import LowerEndpointAndGuess
    from dp_accounting.rdp import RdpAccountant

    with _quiet_accountant():
        z = calibrate_dp_mechanism(
            RdpAccountant,
            lambda z: SelfComposedDpEvent(_round_event(rate, z), rounds),
            target_epsilon,
            delta,
            LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    return float(z)


class Accountant:
    """The privacy spent so far by one run: every round's (sampling rate, noise multiplier actually applied), and
    the server's secret noise key. Both are checkpointed, so a resumed run keeps counting and draws the same noise.

    The key is secret on purpose: noise drawn from the public `seed` could be regenerated and subtracted by anyone
    who reads config.yaml. `noise_seed` (tests, reproducible studies) replaces it knowingly."""

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        delta: float,
        rate: float,
        num_clients: int,
        local: bool,
        noise_seed: Optional[int] = None,
    ):
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.rate = rate
        self.num_clients = num_clients
        self.local = local
        self.noise_seed = noise_seed  # handed to clients in local mode (None: they use the OS's randomness)
        self.key = str(noise_seed) if noise_seed is not None else str(secrets.randbits(128))
        self.history: list[tuple[float, float]] = []

    def sample(self, seed: int, rnd: int) -> list[int]:
        return sample(self.num_clients, self.rate, seed, rnd)

    def noise_in_sum(self, sampled: int, contributed: int) -> float:
        """The noise multiplier the round's sum really carries: z in central mode; in local mode, the shares of the
        clients that contributed, z * sqrt(contributed / sampled)."""
        if not self.local:
            return self.noise_multiplier
        return self.noise_multiplier * math.sqrt(contributed / sampled) if sampled else 0.0

    def release(self, rnd: int, summed: Summed, sampled: int, global_params: Params) -> tuple[Update, float]:
        """The round's noised mean delta as one update, after accounting for it; and the round's noise multiplier.
        A round where nobody contributed releases nothing about anyone (`NoOp`)."""
        z = self.noise_in_sum(sampled, len(summed.clients))
        noise = 0.0 if self.local else z * self.clip_norm
        rng = np.random.default_rng([int(self.key), rnd, 307])
        noised = add_noise(summed.delta_sum, noise, rng)
        denominator = self.rate * self.num_clients
        mean = {k: v / denominator for k, v in noised.items()}
        if summed.clients or not self.local:
            self.history.append((self.rate, z))
        update = as_update(global_params, mean, summed.num_examples)
        for k in update.params:  # noise can push a BatchNorm variance below 0 (NaN outputs); clamping is free
            if k.endswith("running_var"):  # post-processing, which costs no privacy
                update.params[k] = np.maximum(update.params[k], 0)
        return update, z

    def epsilon(self) -> float:
        return epsilon(self.history, self.delta)

    def state_dict(self) -> dict:
        return {"key": self.key, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.key = state["key"]
        self.history = [tuple(h) for h in state["history"]]
