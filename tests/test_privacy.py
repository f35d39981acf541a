"""Client-level differential privacy (fedmm.fl.privacy): the clipping bound, the noise, the accounting against
dp-accounting itself, and the runs and refusals a user meets on the command line."""

import math

import numpy as np
import pytest
from dp_accounting import PoissonSampledDpEvent, GaussianDpEvent, SelfComposedDpEvent
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from conftest import fedmm, metrics, same_globals
from fedmm.fl.privacy import (
    Accountant,
    clip_delta,
    clipped_sum,
    epsilon,
    local_noise_std,
    noise_for_epsilon,
    privatize,
    sample,
)
from fedmm.fl.update import Update

G = {"w": np.zeros((40, 25), np.float32), "b": np.zeros(7, np.float32), "steps": np.zeros(1, np.int64)}


def _update(cid, scale, rng, keys=("w", "b")):
    return Update(
        client_id=cid,
        params={k: (G[k] + scale * rng.normal(size=G[k].shape)).astype(np.float32) for k in keys},
        num_examples=10 * (cid + 1),
    )


def _norm(delta):
    return math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))


@pytest.mark.parametrize("scale", [1e-3, 0.1, 10.0, 1e6])
def test_clipping_bounds_every_delta_exactly_and_keeps_its_direction(scale):
    rng = np.random.default_rng(0)
    u = _update(0, scale, rng)
    delta, norm = clip_delta(u.params, G, clip_norm=1.5)
    raw = {k: u.params[k].astype(np.float64) for k in ("w", "b")}
    assert norm == pytest.approx(_norm(raw))
    assert _norm(delta) <= 1.5 * (1 + 1e-12)
    if norm <= 1.5:  # within the bound: untouched
        assert all(np.array_equal(delta[k], raw[k]) for k in raw)
    else:  # scaled, never truncated per entry
        assert _norm(delta) == pytest.approx(1.5, rel=1e-12)
        np.testing.assert_allclose(delta["w"] / delta["w"].ravel()[0], raw["w"] / raw["w"].ravel()[0], rtol=1e-9)
    assert "steps" not in delta  # integer buffers are not data the noise could cover; they keep the global value


def test_a_key_the_client_did_not_send_counts_as_unchanged():
    u = _update(0, 5.0, np.random.default_rng(1), keys=("w",))
    delta, _ = clip_delta(u.params, G, clip_norm=1.0)
    assert np.array_equal(delta["b"], np.zeros(7)) and _norm(delta) == pytest.approx(1.0)


def test_the_sum_is_unweighted_and_the_mean_has_a_fixed_denominator():
    """Four clients sampled of eight at rate 0.5: the release divides by q * N = 4 whoever replied, and example
    counts play no part (a weighted mean would differ: the clients hold 10, 20, 30 examples)."""
    rng = np.random.default_rng(2)
    ups = [_update(c, 0.01, rng) for c in range(3)]
    summed = clipped_sum(ups, G, clip_norm=100.0)
    acc = Accountant(
        clip_norm=100.0, noise_multiplier=1e-12, delta=1e-5, rate=0.5, num_clients=8, local=False, noise_seed=3
    )
    mean, z = acc.release(1, summed, sampled=4, global_params=G)
    expect = sum(u.params["w"].astype(np.float64) for u in ups) / 4
    np.testing.assert_allclose(mean.params["w"], expect, atol=1e-6)
    assert np.array_equal(mean.params["steps"], G["steps"]) and z == 1e-12 and acc.history == [(0.5, 1e-12)]


def test_central_noise_has_the_stated_std():
    zeros = clipped_sum([], {"w": np.zeros(200_000, np.float32)}, clip_norm=0.7)
    acc = Accountant(clip_norm=0.7, noise_multiplier=1.3, delta=1e-5, rate=1.0, num_clients=5, local=False)
    mean, _ = acc.release(1, zeros, sampled=5, global_params={"w": np.zeros(200_000, np.float32)})
    measured = float(np.std(mean.params["w"].astype(np.float64) * 5))  # undo the denominator q * N = 5
    assert measured == pytest.approx(1.3 * 0.7, rel=0.01)


def test_noise_never_leaves_a_batchnorm_variance_negative():
    g = {"bn.running_var": np.full(1000, 0.01, np.float32), "bn.running_mean": np.zeros(1000, np.float32)}
    acc = Accountant(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5, rate=1.0, num_clients=2, local=False)
    mean, _ = acc.release(1, clipped_sum([], g, 1.0), sampled=2, global_params=g)
    assert mean.params["bn.running_var"].min() == 0 and (mean.params["bn.running_mean"] < 0).any()


def test_local_shares_add_up_to_the_central_noise_and_dropouts_are_accounted():
    g = {"w": np.zeros(100_000, np.float32)}
    std = local_noise_std(2.0, 0.5, sampled=4)
    shares = [privatize({"w": g["w"]}, g, 0.5, std, np.random.default_rng(c))["w"].astype(np.float64) for c in range(4)]
    assert float(np.std(sum(shares))) == pytest.approx(2.0 * 0.5, rel=0.01)
    noised = privatize({"w": np.ones(100_000, np.float32)}, g, 0.5, 0.0, np.random.default_rng(0))
    assert _norm({"w": noised["w"].astype(np.float64)}) == pytest.approx(0.5, rel=1e-6)  # clipped on the client
    acc = Accountant(0.5, 2.0, 1e-5, rate=1.0, num_clients=4, local=True)
    assert acc.noise_in_sum(sampled=4, contributed=4) == 2.0
    assert acc.noise_in_sum(sampled=4, contributed=1) == pytest.approx(1.0)  # three shares never arrived


def _library_epsilon(rate, z, rounds, delta):
    acc = RdpAccountant()
    event = GaussianDpEvent(z) if rate == 1 else PoissonSampledDpEvent(rate, GaussianDpEvent(z))
    acc.compose(event, rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("rate,z,rounds,delta", [(1.0, 1.0, 3, 1e-5), (0.1, 1.1, 100, 1e-5), (0.01, 0.8, 1000, 1e-6)])
def test_epsilon_is_the_accountant_librarys_own_value(rate, z, rounds, delta):
    eps = epsilon([(rate, z)] * rounds, delta)
    assert eps == pytest.approx(_library_epsilon(rate, z, rounds, delta), rel=1e-12)
    pld = PLDAccountant()  # a tighter accountant: RDP's bound is never below it (a wrong event would be)
    pld.compose(SelfComposedDpEvent(PoissonSampledDpEvent(rate, GaussianDpEvent(z)), rounds))
    assert pld.get_epsilon(delta) <= eps <= 1.6 * pld.get_epsilon(delta)


def test_epsilon_grows_with_rounds_and_falls_with_noise_and_sampling():
    e = lambda rate, z, t: epsilon([(rate, z)] * t, 1e-5)  # noqa: E731
    assert e(1, 1.0, 1) < e(1, 1.0, 2) < e(1, 1.0, 10)
    assert e(1, 2.0, 10) < e(1, 1.0, 10) and e(0.1, 1.0, 10) < e(1, 1.0, 10)
    # Without sampling T rounds at noise z are one Gaussian mechanism at z / sqrt(T)
    assert e(1, 1.2, 9) == pytest.approx(e(1, 1.2 / 3, 1), rel=1e-6)
    assert epsilon([], 1e-5) == 0 and math.isinf(epsilon([(1.0, 0.0)], 1e-5))


@pytest.mark.parametrize("target,rate,rounds", [(3.0, 1.0, 3), (1.0, 0.1, 50), (8.0, 0.05, 200)])
def test_target_epsilon_solves_for_the_noise_and_ends_at_or_below_it(target, rate, rounds):
    z = noise_for_epsilon(target, rate, rounds, 1e-5)
    assert epsilon([(rate, z)] * rounds, 1e-5) <= target * (1 + 1e-9)
    assert epsilon([(rate, z * 0.99)] * rounds, 1e-5) > target  # and not far above what the target needs


def test_poisson_sampling_has_the_claimed_rate_and_is_a_function_of_seed_and_round():
    picks = [sample(50, 0.2, 7, r) for r in range(1, 2001)]
    assert np.mean([len(p) for p in picks]) == pytest.approx(10, rel=0.03)
    assert len({len(p) for p in picks}) > 5  # the count varies: independent draws, not a fixed-size sample
    assert sample(50, 0.2, 7, 3) == picks[2] and sample(50, 0.2, 8, 3) != picks[2]
    assert sample(6, 1.0, 7, 3) == list(range(6))


def test_accountant_state_survives_a_checkpoint():
    a = Accountant(1.0, 1.0, 1e-5, 0.5, 10, local=False)
    a.history = [(0.5, 1.0), (0.5, 1.0)]
    b = Accountant(1.0, 1.0, 1e-5, 0.5, 10, local=False)
    b.load_state_dict(a.state_dict())
    assert b.key == a.key and b.epsilon() == a.epsilon() and Accountant(1, 1, 1e-5, 1, 2, False).key != a.key


# ------------------------------------------------------------------------------------------------ command line


@pytest.mark.run
def test_a_dp_run_records_increasing_epsilon_and_resumes_counting(tmp_path, tiny_args):
    dp = ["privacy=dp", "privacy.noise_multiplier=1.0", "privacy.clip_norm=1.0", "privacy.noise_seed=5"]
    fedmm("run", *tiny_args, *dp, "rounds=3", f"output_dir={tmp_path / 'a'}")
    eps = [r["dp_epsilon"] for r in metrics(tmp_path / "a")]
    assert all(math.isfinite(e) for e in eps) and eps[0] < eps[1] < eps[2]
    assert eps[2] == pytest.approx(_library_epsilon(1.0, 1.0, 3, 1e-5))
    first = metrics(tmp_path / "a")[0]  # the norms that clip_norm=1 cut, for tuning it
    assert first["clipped"] and all(n > 1.0 for n in first["clipped"].values())
    assert "dp_epsilon" in (tmp_path / "a" / "report.md").read_text()
    fedmm("run", *tiny_args, *dp, "rounds=2", f"output_dir={tmp_path / 'b'}")
    out = fedmm("run", "rounds=3", f"resume={tmp_path / 'b'}").stdout
    assert "dp_epsilon" in out  # the terminal table shows it
    assert [r["dp_epsilon"] for r in metrics(tmp_path / "b")] == eps
    same_globals(tmp_path / "a", tmp_path / "b", atol=0)


@pytest.mark.run
def test_target_epsilon_run_ends_at_or_below_the_target(tmp_path, tiny_args):
    out = fedmm(
        "run",
        *tiny_args,
        "privacy=dp",
        "privacy.target_epsilon=3",
        "rounds=3",
        "num_clients=6",
        "clients_per_round=3",
        f"output_dir={tmp_path}",
    ).stdout
    assert "solved for target_epsilon=3" in out and "Poisson sampling q=0.5" in out
    records = metrics(tmp_path)
    assert records[-1]["dp_epsilon"] <= 3.0 and records[-1]["dp_epsilon"] > 2.9


@pytest.mark.run
def test_local_mode_noises_on_the_clients_and_the_server_adds_none(tmp_path, tiny_args):
    """With local noise the clients send every key (noise on all of them), the server accepts that, and the
    model moves by the clients' noise only: a run whose shares are tiny matches the unweighted mean closely."""
    fedmm(
        "run",
        *tiny_args,
        "privacy=dp",
        "privacy.mode=local",
        "privacy.noise_multiplier=1e-9",
        "privacy.clip_norm=1e3",
        "privacy.noise_seed=1",
        "rounds=1",
        f"output_dir={tmp_path / 'local'}",
    )
    fedmm(
        "run",
        *tiny_args,
        "privacy=dp",
        "privacy.noise_multiplier=1e-9",
        "privacy.clip_norm=1e3",
        "privacy.noise_seed=1",
        "rounds=1",
        f"output_dir={tmp_path / 'central'}",
    )
    records = metrics(tmp_path / "local")
    assert records[0]["clients_replied"] == 4 and "rejected" not in records[0]
    same_globals(tmp_path / "local", tmp_path / "central", atol=1e-5)  # float32 rounding of the clients' sends


@pytest.mark.run
def test_dp_works_for_a_lora_vlm_and_only_the_adapters_travel(tmp_path):
    fedmm(
        "run",
        "task=easyvqa_gen",
        "model=blip_vqa_tiny",
        "modality.text_only=[]",
        "modality.image_only=[]",
        "max_train_samples=64",
        "max_eval_samples=16",
        "num_clients=2",
        "batch_size=16",
        "privacy=dp",
        "privacy.noise_multiplier=0.8",
        "privacy.clip_norm=0.5",
        "rounds=2",
        f"output_dir={tmp_path}",
    )
    records = metrics(tmp_path)
    assert records[1]["dp_epsilon"] > records[0]["dp_epsilon"] > 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "global.safetensors"), "np") as f:
        assert f.keys() and all("lora_" in k for k in f.keys())


@pytest.mark.parametrize(
    "args,message",
    [
        (["privacy=dp", "strategy=median"], "strategy=median does not work with privacy=dp"),
        (["privacy=dp", "strategy=krum"], "use one that averages: "),
        (["privacy=dp", "strategy=fedmap"], "strategy=fedmap does not work with privacy=dp"),
        (["privacy=dp", "max_update_norm=3"], "privacy.clip_norm bounds every update already"),
        (["privacy=dp", "privacy.mode=nearby"], "privacy.mode must be one of central, local"),
        (["privacy=[0]"], "privacy takes one option name"),
        (["privacy=dp", "privacy.clip_norm=0"], "privacy.clip_norm=0.0 is out of range"),
        (["privacy=dp", "privacy.delta=1.5"], "privacy.delta=1.5 is out of range"),
        (["privacy=dp", "privacy.target_epsilon=-1"], "privacy.target_epsilon=-1.0 is out of range"),
        (["privacy.secure_aggregation=true"], "needs runtime=flower (Flower's SecAgg+); runtime=local"),
        (["privacy.secure_aggregation=true", "runtime=nvflare"], "runtime=nvflare has no secure aggregation"),
        (["privacy.secure_aggregation=true", "runtime=flower", "strategy=trimmed_mean"], "never shows"),
        (["privacy.secure_aggregation=true", "runtime=flower", "compression.kind=int8"], "use compression.kind=none"),
        (["privacy.secure_aggregation=true", "runtime=flower", "strategy.weight_by=steps"], "use strategy.weight_by"),
        (
            ["privacy.secure_aggregation=true", "runtime=flower", "attack=scale", "attack.clients=[1]"],
            "use attack=none",
        ),
        (["privacy.secure_aggregation=true", "runtime=flower", "privacy=dp"], "use privacy.mode=local"),
        (["privacy.secure_aggregation=true", "runtime=flower", "max_update_norm=auto"], "never sees an update"),
    ],
)
def test_privacy_refusals_are_one_line(tmp_path, tiny_args, args, message):
    proc = fedmm("run", *tiny_args, *args, f"output_dir={tmp_path / 'x'}", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_centralized_refuses_privacy_options(tmp_path, tiny_args):
    proc = fedmm("centralized", *tiny_args, "privacy=dp", f"output_dir={tmp_path / 'x'}", check=False)
    assert proc.returncode == 2 and "fedmm centralized has none" in proc.stderr, proc.stderr


def test_the_pure_pieces_by_hand_on_a_non_zero_global():
    """Small cases where a flipped sign, a dropped cast or a changed boundary shows: a non-zero global (so params -
    global differs from params + global), a delta exactly at the bound (not clipped, not recorded), float16 and
    integer tensors."""
    from fedmm.fl.privacy import _round_event, add_noise, as_update

    g = {"a": np.array([1.0, -1.0], np.float16), "n": np.array([7], np.int64)}
    near = Update(client_id=4, params={"a": np.array([4.0, 3.0], np.float16)}, num_examples=9)  # delta (3, 4): 5
    far = Update(client_id=6, params={"a": np.array([7.0, 7.0], np.float16)}, num_examples=2)  # delta (6, 8): 10
    delta, norm = clip_delta(near.params, g, clip_norm=5.0)
    assert norm == 5.0 and delta["a"].tolist() == [3.0, 4.0]  # at the bound: unchanged
    clipped: dict = {}
    total = clipped_sum([near, far], g, clip_norm=5.0, clipped=clipped)
    assert total.delta_sum["a"].tolist() == [6.0, 8.0] and clipped == {6: 10.0}  # 3+3, 4+4; only `far` clipped
    assert (total.weight, total.clients, total.num_examples) == (2.0, [4, 6], 11)
    assert clipped_sum([far], g, clip_norm=None).delta_sum["a"].tolist() == [6.0, 8.0]  # local mode: no clipping
    rng_values = np.random.default_rng(5).normal(0.0, 2.0, size=2)
    assert add_noise({"a": np.zeros(2)}, 2.0, np.random.default_rng(5))["a"].tolist() == rng_values.tolist()
    same = {"a": np.zeros(2)}
    assert add_noise(same, 0.0, np.random.default_rng(5)) is same  # no noise: nothing drawn
    out = privatize(far.params, g, 5.0, 0.0, np.random.default_rng(0))
    assert out["a"].dtype == np.float16 and out["a"].tolist() == [4.0, 3.0]  # global + clipped delta (3, 4)
    u = as_update(g, {"a": np.array([0.5, 0.5])}, 0)
    assert (u.client_id, u.num_examples, u.params["a"].tolist()) == (-1, 1, [1.5, -0.5]) and u.params["n"][0] == 7
    assert u.params["a"].dtype == np.float16
    assert local_noise_std(2.0, 3.0, 0) == 6.0 and local_noise_std(2.0, 3.0, 4) == 3.0
    assert sample(5, 1.0, 0, 1) == [0, 1, 2, 3, 4] and len(sample(2000, 0.25, 0, 1)) < 2000
    assert type(_round_event(1.0, 0.0)).__name__ == "NonPrivateDpEvent"
    assert type(_round_event(1.0, 1.0)).__name__ == "GaussianDpEvent"
    assert type(_round_event(0.5, 1.0)).__name__ == "PoissonSampledDpEvent"


def test_release_by_hand_central_and_local():
    """The release step with the noise key pinned: the central noise is exactly z * clip normal draws from the key's
    stream for that round, the mean divides by rate * N whoever contributed; in local mode the server adds nothing,
    its z is the contributed shares' and a round nobody contributed to costs nothing."""
    from fedmm.fl.privacy import add_noise

    g = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
    ups = [
        Update(client_id=0, params={"w": np.array([1.3, -2.4, 0.5], np.float32)}, num_examples=5),  # delta 0.5
        Update(client_id=2, params={"w": np.array([1.0, -2.0, 1.5], np.float32)}, num_examples=1),  # delta 1.0 -> 0.8
    ]
    summed = clipped_sum(ups, g, clip_norm=0.8)
    central = Accountant(0.8, 2.0, 1e-5, rate=0.5, num_clients=4, local=False, noise_seed=9)
    assert central.noise_seed == 9 and central.key == "9"
    update, z = central.release(3, summed, sampled=2, global_params=g)
    noised = add_noise(summed.delta_sum, 2.0 * 0.8, np.random.default_rng([9, 3, 307]))
    expected = (g["w"].astype(np.float64) + noised["w"] / (0.5 * 4)).astype(np.float32)
    assert z == 2.0 and central.history == [(0.5, 2.0)]
    np.testing.assert_array_equal(update.params["w"], expected)
    assert central.epsilon() == epsilon([(0.5, 2.0)], 1e-5) > 0
    # Nobody contributed: the central server still releases noise, so the round is counted.
    central.release(4, clipped_sum([], g, 0.8), sampled=2, global_params=g)
    assert central.history == [(0.5, 2.0), (0.5, 2.0)]

    local = Accountant(0.8, 2.0, 1e-5, rate=1.0, num_clients=4, local=True, noise_seed=9)
    update, z = local.release(1, summed, sampled=4, global_params=g)
    assert z == pytest.approx(2.0 * math.sqrt(2 / 4)) and local.history == [(1.0, z)]
    by_hand = (g["w"].astype(np.float64) + summed.delta_sum["w"] / 4).astype(np.float32)
    np.testing.assert_array_equal(update.params["w"], by_hand)  # no server noise
    assert local.release(2, clipped_sum([], g, 0.8), sampled=4, global_params=g)[1] == 0.0
    assert local.history == [(1.0, z)] and local.noise_in_sum(sampled=0, contributed=0) == 0.0


def test_poisson_draws_are_pinned():
    """A resumed run must draw exactly these (a changed stream constant or comparison shows here)."""
    assert sample(10, 0.5, 3, 2) == [2, 3, 4, 9] and sample(10, 0.3, 1, 1) == [2, 3]


def test_target_noise_is_the_smallest_to_its_tolerance():
    z = noise_for_epsilon(2.0, 0.2, 20, 1e-5)
    assert epsilon([(0.2, z)] * 20, 1e-5) <= 2.0 * (1 + 1e-9) < epsilon([(0.2, z - 2e-4)] * 20, 1e-5)


def test_the_summed_mean_and_the_accountants_own_draws():
    from fedmm.fl.privacy import Summed

    summed = Summed(delta_sum={"w": np.array([2.0, 4.0])}, weight=4.0, num_examples=7)
    u = summed.mean_update({"w": np.array([1.0, 1.0], np.float32)})
    assert u.params["w"].tolist() == [1.5, 2.0] and u.params["w"].dtype == np.float32 and u.num_examples == 7
    assert Accountant(1.0, 1.0, 1e-5, 0.5, 10, local=False).sample(3, 2) == [2, 3, 4, 9] == sample(10, 0.5, 3, 2)


def test_the_plan_warns_when_the_noise_outweighs_every_update(tiny_args, caplog):
    """z sqrt(values) / (clients per round) over 1 means the noise norm on the mean exceeds clip_norm: one line
    with the ratio, the values and the clients per round."""
    from fedmm.config import load_settings
    from fedmm.experiment.server import accountant

    s = load_settings([*tiny_args, "privacy=dp", "privacy.noise_multiplier=1.0", "rounds=3"])
    with caplog.at_level("INFO", logger="fedmm"):
        acc = accountant(s, num_clients=8, per_round=4, params={"w": np.zeros(10_000, np.float32)})
    assert acc.rate == 0.5 and acc.noise_multiplier == 1.0
    assert caplog.messages[-1] == (
        "privacy: the noise on each round's mean update is about 25x clip_norm (over 10,000 values and 4 clients "
        "per round): expect little learning; client-level DP needs many clients (README: Privacy)"
    )
