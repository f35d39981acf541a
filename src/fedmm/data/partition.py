"""Partitioners: split example indices over clients. Pure functions of (labels, num_clients, seed).

All are *remainder-fair*: when counts do not divide evenly, the leftover examples go one each to clients picked at
random (largest remainder first), never all to the last client. None returns an empty client: a split that would
leave one below `min_size` is an error that says what to change.

Flower Datasets (`flwr-datasets`) ships partitioners of the same names; it is not used here because it cannot be
installed beside the locked stack (0.6.1, the newest, requires datasets < 5 and the lock holds datasets 5.2.0, and
its package imports seaborn on load), and its size partitioners give every leftover example to the last partition.
`shard`, `linear` and `exponential` follow its PathologicalPartitioner ("deterministic" class assignment, over a
seeded order of the classes), LinearPartitioner and ExponentialPartitioner.
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


def shard_partition(
    labels: np.ndarray, num_clients: int, classes_per_client: int, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Pathological label skew: each client holds exactly `classes_per_client` classes. Over a seeded order of the
    classes, client k gets classes k, k+1, ..., k+m-1 (mod the number of classes); each class's examples are dealt
    evenly among the clients that hold it. A class no client holds (more classes than clients + m - 1) is left out,
    which the split's counts show."""
    labels = np.asarray(labels)
    _check(len(labels), num_clients, min_size)
    classes = np.unique(labels)
    if not 1 <= classes_per_client <= len(classes):
        raise FedmmError(
            f"partition.classes_per_client must be in [1, {len(classes)}], the classes in the data "
            f"(got {classes_per_client})"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes)
    held = [[order[(k + j) % len(order)] for j in range(classes_per_client)] for k in range(num_clients)]
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in classes:
        holders = [k for k in range(num_clients) if c in held[k]]
        if not holders:
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        counts = fair_split_counts(len(idx), np.ones(len(holders)), rng)
        for k, chunk in zip(holders, np.split(idx, np.cumsum(counts)[:-1])):
            parts[k].append(chunk)
    out = [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
    small = [k for k, p in enumerate(out) if len(p) < min_size]
    if small:
        raise FedmmError(
            f"the shard split leaves client {small[0]} with {len(out[small[0]])} examples, below "
            f"partition.min_size={min_size}; raise partition.classes_per_client, lower num_clients, or add data"
        )
    return out


SIZE_RULES = {"linear": lambda i: i, "exponential": np.exp}  # client k (1-based) gets a share proportional to f(k)


def size_partition(num_examples: int, num_clients: int, rule: str, seed: int, min_size: int = 1) -> list[np.ndarray]:
    """Quantity skew: shuffled examples, client k (k = 1..K) getting a share proportional to k (`linear`) or e^k
    (`exponential`), rounded fairly; the labels stay IID."""
    _check(num_examples, num_clients, min_size)
    rng = np.random.default_rng(seed)
    counts = fair_split_counts(num_examples, SIZE_RULES[rule](np.arange(1, num_clients + 1, dtype=np.float64)), rng)
    if counts.min() < min_size:
        raise FedmmError(
            f"partition={rule} gives {num_clients} clients from {counts.min()} to {counts.max()} examples, below "
            f"partition.min_size={min_size}; lower num_clients, use partition=linear, or add data"
        )
    perm = rng.permutation(num_examples)
    return [np.sort(part) for part in np.split(perm, np.cumsum(counts)[:-1])]


def natural_id_partition(sites: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """One client per distinct site name, in sorted order: the examples whose site it is. `num_clients` is the
    number of sites the data names (all its rows): one left without training rows is an error, not an empty
    client."""
    sites = np.asarray(sites, dtype=object)
    names = sorted(set(sites.tolist()))
    if len(names) != num_clients:
        raise FedmmError(
            f"the data names {num_clients} sites but {len(names)} have training rows left (the server's test and "
            "validation rows are taken first); give those sites more rows, or task.test_path / task.val_path files"
        )
    return [np.flatnonzero(sites == name) for name in names]


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
