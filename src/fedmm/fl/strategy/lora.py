"""LoRA-aware aggregation. A LoRA adapter's weight change is scale * B @ A, and averaging A and B separately is not
averaging the changes: mean(B_k) @ mean(A_k) != mean(B_k @ A_k). Two exact fixes:

- `ffa_lora` (Sun et al., 2024, FFA-LoRA): every A stays at its initial value, which all clients share because the
  model is built from the run's seed. Only B is trained and sent (half the adapter bytes), and
  mean(B_k) @ A == mean(B_k @ A) exactly.
- `lora_exact`: clients train both; the server forms the example-weighted sum of B_k @ A_k and re-factors it to rank
  r without ever building the dense (out x in) matrix: QR of the stacked B's and of the stacked A's leaves a small
  (K r x K r) core whose SVD gives the best rank-r factors (Eckart-Young). When the sum has rank <= r (e.g. the
  clients share A) the result is exact; otherwise it is the closest rank-r adapter and the rest is dropped.

Adapters are recognised by peft's naming: `<module>.lora_A.<adapter>.weight` (r x in) beside `...lora_B...` (out x r).
Every other tensor is averaged as in FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmm.fl.update import Update

from fedmm.params import Params
from fedmm.fl.strategy.base import STRATEGIES, Strategy
from fedmm.fl.strategy.fedavg import FedAvg, weighted_average
from fedmm.options import opt


def lora_pairs(keys) -> list[tuple[str, str]]:
    """(A key, B key) for every LoRA adapter among `keys`."""
    keys = set(keys)
    return sorted(
        (k, k.replace(".lora_A.", ".lora_B."))
        for k in keys
        if ".lora_A." in k and k.replace(".lora_A.", ".lora_B.") in keys
    )


def product_average(factors: list[tuple[np.ndarray, np.ndarray, float]], rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-`rank` factors (B, A) of sum_k w_k B_k A_k / sum_k w_k, from (B_k, A_k, w_k) triples.

    With B_cat = [w_1 B_1 ... w_K B_K] / W and A_cat = [A_1; ...; A_K], the sum is B_cat @ A_cat. QR both sides:
    B_cat = Qb Rb, A_cat^T = Qa Ra, so the sum is Qb (Rb Ra^T) Qa^T, and the SVD of the small core Rb Ra^T = U S V^T
    gives B = Qb U_r sqrt(S_r), A = sqrt(S_r) V_r^T Qa^T. Cost O((out + in) (K r)^2), never O(out * in).
    """
    total = float(sum(w for _, _, w in factors))
    b_cat = np.concatenate([b.astype(np.float64) * (w / total) for b, _, w in factors], axis=1)
    a_cat = np.concatenate([a.astype(np.float64) for _, a, _ in factors], axis=0)
    qb, rb = np.linalg.qr(b_cat)
    qa, ra = np.linalg.qr(a_cat.T)
    u, s, vt = np.linalg.svd(rb @ ra.T)
    r = min(rank, len(s))
    root = np.sqrt(s[:r])
    b = (qb @ u[:, :r]) * root
    a = (root[:, None] * vt[:r]) @ qa.T
    if r < rank:  # fewer directions than the adapter's rank: the missing ones are zero
        b = np.pad(b, ((0, 0), (0, rank - r)))
        a = np.pad(a, ((0, rank - r), (0, 0)))
    return b, a


@dataclass
class FfaLoraConfig:
    name: str = opt("ffa_lora", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


@STRATEGIES.register("ffa_lora", FfaLoraConfig)
class FfaLora(FedAvg):
    def travels(self, key: str) -> bool:
        return ".lora_A." not in key


@dataclass
class LoraExactConfig:
    name: str = opt("lora_exact", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


@STRATEGIES.register("lora_exact", LoraExactConfig)
class LoraExact(Strategy):
    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        weighted = [(u.params, float(u.num_examples)) for u in updates]
        out = weighted_average(global_params, weighted)
        for ka, kb in lora_pairs(global_params):
            # A client that did not send an adapter (it lacks that modality) counts with the global one, as in FedAvg.
            factors = [(p.get(kb, global_params[kb]), p.get(ka, global_params[ka]), w) for p, w in weighted]
            b, a = product_average(factors, rank=global_params[ka].shape[0])
            out[kb], out[ka] = b.astype(global_params[kb].dtype), a.astype(global_params[ka].dtype)
        return out
