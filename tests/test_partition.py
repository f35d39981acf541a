import numpy as np
import pytest

from fedmm.data.partition import (
    shard_partition,
    size_partition,
    dirichlet_partition,
    fair_split_counts,
    holdout_split,
    iid_partition,
    roundrobin_partition,
)
from fedmm.errors import FedmmError


def _labels(n=2000, c=10, seed=0):
    return np.random.default_rng(seed).integers(0, c, n)


def test_iid_covers_everything_once_and_sizes_differ_by_at_most_one():
    parts = iid_partition(103, 10, seed=1)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(103))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert [p.tolist() for p in iid_partition(103, 10, seed=1)] == [p.tolist() for p in parts]  # by the seed
    assert [p.tolist() for p in iid_partition(103, 10, seed=2)] != [p.tolist() for p in parts]
    assert sorted(len(p) for p in iid_partition(3, 3, seed=0)) == [1, 1, 1]  # one example each is enough


def test_dirichlet_is_a_partition_and_deterministic():
    y = _labels()
    a = dirichlet_partition(y, 8, alpha=0.5, seed=3)
    b = dirichlet_partition(y, 8, alpha=0.5, seed=3)
    c = dirichlet_partition(y, 8, alpha=0.5, seed=4)
    assert sorted(np.concatenate(a).tolist()) == list(range(len(y)))
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def _mean_tv_to_global(y, parts, c):
    glob = np.bincount(y, minlength=c) / len(y)
    return np.mean([0.5 * np.abs(np.bincount(y[p], minlength=c) / len(p) - glob).sum() for p in parts])


def test_small_alpha_skews_labels_more_than_large_alpha():
    y = _labels(4000)
    skew_small = _mean_tv_to_global(y, dirichlet_partition(y, 8, alpha=0.1, seed=0), 10)
    skew_large = _mean_tv_to_global(y, dirichlet_partition(y, 8, alpha=100.0, seed=0), 10)
    skew_iid = _mean_tv_to_global(y, iid_partition(len(y), 8, seed=0), 10)
    assert skew_small > 0.4
    assert skew_large < 0.1 and skew_iid < 0.1


def test_no_client_is_empty_even_at_tiny_alpha():
    y = _labels(500, c=10)
    for seed in range(20):
        parts = dirichlet_partition(y, 10, alpha=0.1, seed=seed, min_size=5)
        assert min(len(p) for p in parts) >= 5


def test_impossible_minimum_gives_clear_error():
    with pytest.raises(FedmmError, match="min_size"):
        dirichlet_partition(_labels(100, c=2), 10, alpha=0.01, seed=0, min_size=9, max_tries=3)
    with pytest.raises(FedmmError, match="num_clients"):
        iid_partition(3, 5, seed=0)


def test_remainders_do_not_pile_onto_one_client():
    # 10 examples over 3 equal shares, many draws: the extra example goes to each client about equally often,
    # never always to the last one.
    hits = np.zeros(3)
    rng = np.random.default_rng(0)
    for _ in range(600):
        counts = fair_split_counts(10, np.ones(3), rng)
        assert counts.sum() == 10 and counts.max() - counts.min() <= 1
        hits[np.argmax(counts)] += 1
    assert hits.min() > 150


def test_fair_split_follows_proportions():
    counts = fair_split_counts(1000, np.array([0.5, 0.3, 0.2]), np.random.default_rng(0))
    assert counts.tolist() == [500, 300, 200]


def test_leftovers_go_to_the_largest_remainders():
    # Proportions that do not divide: 10 x [0.46, 0.34, 0.2] = [4.6, 3.4, 2.0] -> the one leftover goes to the 0.6
    # remainder (giving it to the smallest, or to the last client, would give [4, 3, 3]).
    for seed in range(5):
        rng = np.random.default_rng(seed)
        assert fair_split_counts(10, np.array([0.46, 0.34, 0.2]), rng).tolist() == [5, 3, 2]
        assert fair_split_counts(7, np.array([0.2, 0.3, 0.5]), rng).tolist() == [1, 2, 4]  # [1.4, 2.1, 3.5]
        assert fair_split_counts(9, np.array([0.15, 0.45, 0.4]), rng).tolist() == [1, 4, 4]  # [1.35, 4.05, 3.6]


def test_dirichlet_deals_each_class_in_a_shuffled_order():
    labels = np.zeros(200, dtype=np.int64)  # one class, in index order
    parts = dirichlet_partition(labels, 2, alpha=100.0, seed=0, min_size=2)
    for part in parts:  # dealt without a shuffle, a client would hold one contiguous run of indices
        assert np.diff(np.sort(part)).max() > 1


def test_roundrobin_deals_in_the_datas_order_like_the_fedumm_seeds_alpha_zero():
    parts = roundrobin_partition(10, 3)
    assert [p.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(FedmmError):
        roundrobin_partition(2, 3)


def test_roundrobin_deals_one_example_each_when_there_are_just_enough():
    assert [p.tolist() for p in roundrobin_partition(3, 3)] == [[0], [1], [2]]


def test_partition_refusals():
    with pytest.raises(FedmmError, match=r"partition.alpha must be > 0 \(got 0.0\); use partition=iid"):
        dirichlet_partition(np.zeros(10, int), 2, 0.0, seed=0)
    with pytest.raises(FedmmError, match=r"^num_clients must be >= 1 \(got 0\)$"):
        iid_partition(10, 0, seed=0)


def test_holdouts_by_hand():
    def sizes(n, fraction):
        train, test = holdout_split(n, fraction, seed=0, client=0)
        return len(train), len(test)

    # round(0.25 * 10) = 2 (half to even), drawn from (seed, client): a resumed site holds out the same examples
    assert [p.tolist() for p in holdout_split(10, 0.25, seed=1, client=2)] == [[1, 2, 3, 5, 6, 7, 8, 9], [0, 4]]
    assert sizes(4, 0.5) == (2, 2) and sizes(10, 0.1) == (9, 1)
    assert sizes(2, 0.1) == (1, 1)  # rounds to none, but a positive fraction holds out at least one
    assert sizes(3, 0.9) == (1, 2)  # rounds to all three, but one always stays for training
    assert sizes(1, 0.5) == (1, 0) and sizes(5, 0.0) == (5, 0)  # a lone example trains; no fraction, no test data


def test_dirichlet_accepts_one_example_per_client_and_the_size_check_says_what_it_needs():
    # three examples for three clients: each holds exactly one (the default min_size is 1)
    assert sorted(len(p) for p in dirichlet_partition(np.array([0, 1, 2]), 3, 1.0, seed=0)) == [1, 1, 1]
    assert sorted(np.concatenate(iid_partition(5, 1, seed=0)).tolist()) == [0, 1, 2, 3, 4]  # one client is fine
    with pytest.raises(FedmmError) as e:
        dirichlet_partition(np.zeros(5, int), 3, 1.0, seed=0, min_size=2)
    assert str(e.value) == (
        "5 training examples cannot give 3 clients at least 2 each; lower num_clients or raise max_train_samples"
    )
    with pytest.raises(FedmmError, match=r"^2 training examples cannot give 3 clients at least 1 each"):
        iid_partition(2, 3, seed=0)


def test_dirichlet_gives_up_after_100_draws_and_says_what_to_change():
    with pytest.raises(FedmmError) as e:
        dirichlet_partition(np.zeros(30, int), 3, 0.001, seed=0, min_size=5)
    assert str(e.value) == (
        "dirichlet split with alpha=0.001 left a client below partition.min_size=5 examples in 100 draws; raise "
        "partition.alpha, lower num_clients or partition.min_size, or add data"
    )


def test_shard_gives_each_client_exactly_its_classes_dealt_evenly_and_the_same_split_again():
    """6 classes of 10 examples, 4 clients x 2 classes: client k holds classes k and k+1 of a seeded class order,
    so 5 classes are used; a class held by two clients is dealt 5 + 5, one held by one client goes to it whole."""
    labels = np.repeat(np.arange(6), 10)
    parts = shard_partition(labels, 4, 2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, shard_partition(labels, 4, 2, seed=3)))
    held = [sorted(set(labels[p])) for p in parts]
    assert all(len(h) == 2 for h in held)
    assert len(set(np.concatenate(parts))) == sum(len(p) for p in parts)  # disjoint
    holders = {c: sum(c in h for h in held) for c in range(6)}
    assert sorted(holders.values()) == [0, 1, 1, 2, 2, 2]  # chained: k, k+1 over 4 clients
    for p, h in zip(parts, held):
        for c in h:
            assert (labels[p] == c).sum() == 10 // holders[c]
    other = shard_partition(labels, 4, 2, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))
    with pytest.raises(FedmmError, match=r"classes_per_client must be in \[1, 6\]"):
        shard_partition(labels, 4, 7, seed=0)
    with pytest.raises(FedmmError, match="leaves client .* below partition.min_size=6"):
        shard_partition(labels, 7, 1, seed=0, min_size=6)  # 7 clients, 6 classes: one shared by two, 5 each


@pytest.mark.parametrize("rule, weights", [("linear", [1, 2, 3, 4]), ("exponential", np.exp([1, 2, 3, 4]))])
def test_size_partitions_follow_their_shares_with_fair_rounding(rule, weights):
    parts = size_partition(1003, 4, rule, seed=1)
    sizes = np.array([len(p) for p in parts])
    exact = 1003 * np.asarray(weights, float) / np.sum(weights)
    assert sizes.sum() == 1003 and np.all(np.abs(sizes - exact) < 1)  # largest remainders, not all on the last
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1003))
    assert all(np.array_equal(a, b) for a, b in zip(parts, size_partition(1003, 4, rule, seed=1)))
    with pytest.raises(FedmmError, match="partition=exponential gives 16 clients from 0"):
        size_partition(1003, 16, "exponential", seed=1)  # e^1 / sum e^k of 1,003: no example for the first
