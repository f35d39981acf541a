"""LoRA aggregation: naive averaging of A and B is not averaging B @ A; FFA-LoRA and the product re-factoring are."""

import numpy as np

from fedmm.fl.update import Update
from fedmm.fl.strategy.fedavg import FedAvg, FedAvgConfig
from fedmm.fl.strategy.lora import FfaLora, FfaLoraConfig, LoraExact, LoraExactConfig, lora_pairs, product_average

A, B = "enc.q.lora_A.default.weight", "enc.q.lora_B.default.weight"


def clients(rng, k=3, out=12, inp=10, r=2, shared_a=None):
    return [
        (rng.normal(size=(out, r)), shared_a if shared_a is not None else rng.normal(size=(r, inp)), w)
        for w in rng.integers(1, 20, size=k).astype(float)
    ]


def weighted_product(factors):
    total = sum(w for _, _, w in factors)
    return sum(w * b @ a for b, a, w in factors) / total


def _updates(factors):
    return [Update(client_id=i, num_examples=int(w), params={A: a, B: b}) for i, (b, a, w) in enumerate(factors)]


def test_fedavg_on_adapters_is_not_the_average_change_and_lora_exact_is():
    f = clients(np.random.default_rng(0), k=2, r=2)  # two rank-2 changes: their sum has rank <= 4
    g = {A: np.zeros((4, 10)), B: np.zeros((12, 4))}  # a rank-4 adapter holds the sum exactly
    ups = _updates([(np.pad(b, ((0, 0), (0, 2))), np.pad(a, ((0, 2), (0, 0))), w) for b, a, w in f])
    naive = FedAvg(FedAvgConfig()).aggregate(1, g, ups)
    assert np.abs(naive[B] @ naive[A] - weighted_product(f)).max() > 0.1
    exact = LoraExact(LoraExactConfig()).aggregate(1, g, ups)
    np.testing.assert_allclose(exact[B] @ exact[A], weighted_product(f), atol=1e-10)


def test_ffa_lora_keeps_a_at_home_and_its_average_of_b_is_exact():
    rng = np.random.default_rng(1)
    shared_a = rng.normal(size=(2, 10))
    f = clients(rng, shared_a=shared_a)
    strategy = FfaLora(FfaLoraConfig())
    assert not strategy.travels(A) and strategy.travels(B) and strategy.travels("head.w")
    # A does not travel (the experiment freezes it everywhere): the server aggregates the B's alone, and the mean B
    # times the shared A is the mean change.
    ups = [Update(client_id=i, num_examples=int(w), params={B: b}) for i, (b, _, w) in enumerate(f)]
    out = strategy.aggregate(1, {B: np.zeros((12, 2))}, ups)
    assert list(out) == [B]
    np.testing.assert_allclose(out[B] @ shared_a, weighted_product(f), atol=1e-12)


def test_product_average_is_exact_when_the_sum_has_rank_r():
    rng = np.random.default_rng(2)
    f = clients(rng, shared_a=rng.normal(size=(2, 10)))  # sum of B_k A has rank <= 2
    b, a = product_average(f, rank=2)
    assert b.shape == (12, 2) and a.shape == (2, 10)
    np.testing.assert_allclose(b @ a, weighted_product(f), atol=1e-10)


def test_product_average_is_the_best_rank_r_approximation():
    f = clients(np.random.default_rng(3), k=4)  # the sum has rank up to 8 > r = 2
    b, a = product_average(f, rank=2)
    u, s, vt = np.linalg.svd(weighted_product(f))
    best = (u[:, :2] * s[:2]) @ vt[:2]  # Eckart-Young, computed on the dense matrix
    np.testing.assert_allclose(b @ a, best, atol=1e-10)


def test_lora_exact_strategy_factors_adapters_and_averages_the_rest():
    rng = np.random.default_rng(4)
    g = {A: np.zeros((2, 6), np.float32), B: np.zeros((5, 2), np.float32), "head.w": np.zeros(3, np.float32)}
    assert lora_pairs(g) == [(A, B)]
    ups = [
        Update(
            client_id=i,
            num_examples=n,
            params={
                A: rng.normal(size=(2, 6)).astype(np.float32),
                B: rng.normal(size=(5, 2)).astype(np.float32),
                "head.w": np.full(3, float(i), np.float32),
            },
        )
        for i, n in enumerate([1, 3])
    ]
    out = LoraExact(LoraExactConfig()).aggregate(1, g, ups)
    np.testing.assert_allclose(out["head.w"], [0.75] * 3)
    # Two rank-2 products: the best rank-2 approximation of their weighted mean.
    dense = (1 * ups[0].params[B] @ ups[0].params[A] + 3 * ups[1].params[B] @ ups[1].params[A]).astype(float) / 4
    u, s, vt = np.linalg.svd(dense)
    np.testing.assert_allclose(out[B] @ out[A], (u[:, :2] * s[:2]) @ vt[:2], atol=1e-5)
    assert out[A].dtype == np.float32
