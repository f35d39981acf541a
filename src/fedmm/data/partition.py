"""Partitioners: split example indices over clients. Pure functions of (labels, num_clients, seed).

Both are *remainder-fair*: when counts do not divide evenly, the leftover examples go one each to clients picked at
random (largest remainder first), never all to the last client. Neither returns an empty client.
"""

from __future__ import annotations

import numpy as np

from fedmm.errors import FedmmError


def fair_split_counts(total: int, proportions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts that sum to `total`, proportional to `proportions` (largest-remainder rounding).

    Ties among equal remainders are broken at random so no client index is favoured.
    """
    p = np.asarray(proportions, dtype=np.float64)
    p = p / p.sum()
    exact = p * total
    counts = np.floor(exact).astype(np.int64)
    left = int(total - counts.sum())
    if left:
        rema = exact - counts
        order = np.lexsort((rng.random(len(p)), -rema))  # largest remainder first, random among ties
        counts[order[:left]] += 1
    return counts


def roundrobin_partition(num_examples: int, num_clients: int) -> list[np.ndarray]:
    """Example i to client i mod K, in the data's own order: the FedUMM seed's `--dirichlet_alpha 0` ("IID
    round-robin"). IID only as far as the data's order is; `iid` shuffles first."""
    _check(num_examples, num_clients, 1)
    return [np.arange(k, num_examples, num_clients) for k in range(num_clients)]


def iid_partition(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle and deal: client sizes differ by at most one."""
    _check(num_examples, num_clients, 1)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_examples)
    counts = fair_split_counts(num_examples, np.ones(num_clients), rng)
    return [np.sort(part) for part in np.split(perm, np.cumsum(counts)[:-1])]


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 1, max_tries: int = 100
) -> list[np.ndarray]:
    """Label skew: for each class c, client shares q_c ~ Dirichlet(alpha * 1_K); class c's examples are dealt by q_c.

    Small alpha concentrates each class on few clients. A draw that leaves a client with fewer than `min_size`
    examples is redrawn (up to `max_tries`), then it is an error that says what to change.
    """
    labels = np.asarray(labels)
    _check(len(labels), num_clients, min_size)
    if alpha <= 0:
        raise FedmmError(f"partition.alpha must be > 0 (got {alpha}); use partition=iid for an IID split")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            counts = fair_split_counts(len(idx), rng.dirichlet(np.full(num_clients, alpha)), rng)
            for k, chunk in enumerate(np.split(idx, np.cumsum(counts)[:-1])):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise FedmmError(
        f"dirichlet split with alpha={alpha} left a client below partition.min_size={min_size} examples in "
        f"{max_tries} draws; raise partition.alpha, lower num_clients or partition.min_size, or add data"
    )


def _check(num_examples: int, num_clients: int, min_size: int) -> None:
    if num_clients < 1:
        raise FedmmError(f"num_clients must be >= 1 (got {num_clients})")
    if num_examples < num_clients * max(min_size, 1):
        raise FedmmError(
            f"{num_examples} training examples cannot give {num_clients} clients at least "
            f"{max(min_size, 1)} each; lower num_clients or raise max_train_samples"
        )


def holdout_split(num_examples: int, fraction: float, seed: int, client: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of one client's partition: `round(fraction * n)` examples held out as the site's own
    test data, at least one when the fraction is positive and the client has two or more, never all of them. Drawn
    from (seed, client) alone, so a site computes its own split without knowing the others'."""
    n_test = int(round(fraction * num_examples))
    if fraction > 0 and num_examples >= 2:
        n_test = min(max(n_test, 1), num_examples - 1)
    else:
        n_test = 0
    perm = np.random.default_rng([seed, client, 31]).permutation(num_examples)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
