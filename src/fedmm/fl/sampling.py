"""Which clients take part in a round."""

from __future__ import annotations

from typing import Optional

import numpy as np

from fedmm.errors import FedmmError


def num_sampled(num_clients: int, clients_per_round: Optional[int], fraction: float, min_clients: int) -> int:
    """`clients_per_round` when given, else ceil(fraction * num_clients); never below `min_clients`."""
    if clients_per_round is not None:
        n = clients_per_round
    else:
        if not 0.0 < fraction <= 1.0:
            raise FedmmError(f"client_fraction must be in (0, 1] (got {fraction})")
        n = int(np.ceil(fraction * num_clients - 1e-9))
    n = max(n, min_clients)
    if not 1 <= n <= num_clients:
        raise FedmmError(
            f"cannot sample {n} of {num_clients} clients per round; "
            f"set clients_per_round / min_clients between 1 and num_clients"
        )
    return n


def sample_clients(num_clients: int, k: int, seed: int, rnd: int) -> list[int]:
    """k distinct clients, a pure function of (seed, round): a resumed run samples exactly as the original."""
    if k == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, rnd, 101])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))
