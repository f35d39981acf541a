"""The trust boundary: every reply validated before a strategy sees it, norms bounded, aggregation numerics, and
simulated Byzantine clients meeting those checks. Each rejection reason has its case; one bad client of five."""

import json
import math

import numpy as np
import pytest

from fedmm.client.attacks import attack_update, flip_labels
from fedmm.config.schema import AttackConfig
from fedmm.errors import FedmmError
from fedmm.fl.compression import SCALE, encode
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.server import Server, ServerConfig
from fedmm.fl.strategy import STRATEGIES
from fedmm.fl.strategy.fedavg import weighted_average
from fedmm.fl.update import Update
from fedmm.fl.validation import AUTO_NORM_MULTIPLE, Expected, Rejected, check_reply, delta_norm, norm_bound

G = {"enc.w": np.zeros((4, 4), np.float32), "head.b": np.zeros(4, np.float32)}
MAY = Expected(keys=frozenset(G), modalities=frozenset({"image", "text"}), max_examples=100)


def honest(cid: int, value: float = 1.0, n: int = 10, **kw) -> Update:
    params = kw.pop("params", {k: np.full(v.shape, value, np.float32) for k, v in G.items()})
    return Update(
        client_id=cid,
        params=params,
        num_examples=n,
        metrics=kw.pop("metrics", {"train_loss": 0.5, "seconds": 0.1}),
        modalities=frozenset({"image", "text"}),
        **kw,
    )


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b"garbage", "not a fedmm update (JSONDecodeError: Expecting value: line 1 column 1 (char 0))"),
        (honest(2).to_bytes(), "claims to be client 2"),
        (honest(1, n=0).to_bytes(), "num_examples=0 outside [1, 100]"),
        (honest(1, n=-10).to_bytes(), "num_examples=-10 outside [1, 100]"),
        (honest(1, n=10**9).to_bytes(), "num_examples=1000000000 outside [1, 100]"),
        (
            Update(
                1,
                {k: np.ones(v.shape, np.float32) for k, v in G.items()},
                5,
                modalities=frozenset({"image", "text", "audio"}),
            ).to_bytes(),
            "claims modalities ['audio', 'image', 'text'] beyond its ['image', 'text']",
        ),
        # not names: sorting them beside names for the message above raised TypeError and stopped the round
        (
            Update(1, {k: np.ones(v.shape, np.float32) for k, v in G.items()}, 5, modalities=frozenset({1})).to_bytes(),
            "declares modalities that are not names",
        ),
        (
            honest(
                1, params={**{k: np.ones(v.shape, np.float32) for k, v in G.items()}, "other.w": np.ones(2, np.float32)}
            ).to_bytes(),
            "sends keys it may not: other.w",
        ),
        (
            honest(1, params={"enc.w": np.ones((1, 4), np.float32)}).to_bytes(),
            "enc.w has shape (1, 4), expected (4, 4)",
        ),
        (honest(1, params={"head.b": np.ones((), np.float32)}).to_bytes(), "head.b has shape (1,), expected (4,)"),
        (honest(1, params={"head.b": np.ones(4, np.int64)}).to_bytes(), "head.b has dtype int64, expected float32"),
        (
            honest(1, params={"head.b": np.array([0, np.nan, 0, 0], np.float32)}).to_bytes(),
            "non-finite values in head.b",
        ),
        (
            honest(1, params={"head.b": np.array([0, np.inf, 0, 0], np.float32)}).to_bytes(),
            "non-finite values in head.b",
        ),
        (honest(1, params={"head.b": np.full(4, 1e300)}).to_bytes(), "non-finite values in head.b"),  # float32 overflow
        (
            Update(
                1,
                {"head.b": np.ones(4, np.int8)},
                5,
                modalities=frozenset({"text"}),
                compression={"fedmm_compression": json.dumps({"kind": "int8", "block_size": 4})},
            ).to_bytes(),
            "undecodable compressed update (KeyError: 'head.b.__scale__')",
        ),  # an int8 tensor without its scale
        (
            Update(
                1,
                {"head.b" + SCALE: np.ones(1, np.float32), "head.b": np.ones(4, np.int8), "nope": np.ones(1)},
                5,
                modalities=frozenset({"text"}),
                compression={"fedmm_compression": json.dumps({"kind": "int8", "block_size": 4})},
            ).to_bytes(),
            "sends keys it may not: nope",
        ),
        (
            Update(
                1,
                {"head.b": np.ones(4, np.float16)},
                5,
                modalities=frozenset({"text"}),
                compression={"fedmm_compression": json.dumps({"kind": "zip"})},
            ).to_bytes(),
            "undecodable compressed update (ValueError: unknown kind 'zip')",
        ),
        (
            Update(1, {"head.b": np.ones(4, np.float32)}, 5, metrics={"train_loss": float("nan")}).to_bytes(),
            "reports metrics that are not finite numbers within +-1e+12",
        ),
        # a 400-digit integer is refused before any conversion (math.isfinite raised OverflowError on it)
        (
            honest(1, metrics={"train_loss": 10**400}).to_bytes(),
            "reports metrics that are not finite numbers within +-1e+12",
        ),
        # finite but extreme: loss x examples would overflow the record
        (
            honest(1, metrics={"train_loss": 1e308}).to_bytes(),
            "reports metrics that are not finite numbers within +-1e+12",
        ),
        (
            honest(1, metrics={"train_loss": "0.5"}).to_bytes(),
            "reports metrics that are not finite numbers within +-1e+12",
        ),
        (honest(1, n=10**400).to_bytes(), "num_examples=10000000000000000000 outside [1, 100]"),
        (honest(1, n=3.0).to_bytes(), "num_examples=3.0 outside [1, 100]"),
        (honest(1, params={}).to_bytes(), "sends no tensors (a training reply must carry its update)"),
    ],
)
def test_every_rejection_reason(bad, reason):
    with pytest.raises(Rejected) as e:
        check_reply(bad, 1, G, MAY)
    assert str(e.value) == reason  # the whole message, word for word


def test_a_valid_reply_passes_with_safe_casts_and_compression():
    up = check_reply(honest(1, params={"head.b": np.full(4, 2.5, np.float16)}).to_bytes(), 1, G, MAY)
    assert up.params["head.b"].dtype == np.float32 and (up.params["head.b"] == 2.5).all()
    tensors, meta = encode({"head.b": np.full(4, 0.5, np.float32)}, "int8_block", 2)
    packed = Update(1, tensors, 7, compression=meta).to_bytes()
    up = check_reply(packed, 1, G, MAY)
    np.testing.assert_allclose(up.params["head.b"], 0.5, atol=1e-2)  # global (0) + decoded delta
    assert up.compression == {} and set(up.params) == {"head.b"}


def _server(strategy="fedavg", min_clients=1, **cfg):
    entry = STRATEGIES.get(strategy)
    conf = ServerConfig(num_clients=5, per_round=5, min_clients=min_clients, rounds=1, seed=0, **cfg)
    ins = FitInstructions(round=0, seed=0, lr=0.1, local_epochs=1, batch_size=8, weight_decay=0.0)
    return Server(
        entry.factory(entry.config_cls()),
        conf,
        evaluate=lambda p: {},
        instructions=ins,
        expected={c: MAY for c in range(5)},
    )


def _round(server, bad: dict[int, bytes]):
    def fit_clients(rnd, ids, payload, instructions):
        return {c: bad.get(c, honest(c, 1.0 + 0.1 * c).to_bytes()) for c in ids}

    return server.run_round(1, dict(G), fit_clients)


@pytest.mark.parametrize("strategy", ["fedavg", "modality_avg", "fedadam", "median", "trimmed_mean", "krum"])
def test_one_bad_client_of_five_is_rejected_and_recorded(strategy):
    nan = honest(1, params={"head.b": np.array([np.nan] * 4, np.float32)}).to_bytes()
    params, record = _round(_server(strategy), {1: nan})
    assert record["rejected"] == {1: "non-finite values in head.b"} and 1 not in record["clients"]
    assert record["clients_sampled"] == 5 and record["clients_replied"] == 4
    assert all(np.isfinite(v).all() for v in params.values())


def test_rejections_count_as_failures_for_min_clients():
    bad = {c: honest(c, n=-1).to_bytes() for c in (0, 1, 2)}
    with pytest.raises(
        FedmmError,
        match=r"only 2 of 5 clients replied with a valid update \(client 0: "
        r"num_examples=-1 outside",
    ):
        _round(_server(min_clients=3), bad)


def test_norm_bound_clip_reject_and_auto():
    big = honest(1, 1e6).to_bytes()
    params, record = _round(_server(max_update_norm=2.0), {1: big})
    assert record["norm_bound"] == 2.0 and record["clipped"][1] == pytest.approx(1e6 * math.sqrt(20))
    assert set(record["clipped"]) >= {1}
    clipped_only = _round(_server(max_update_norm=2.0), {})[1]["clipped"]
    assert all(n == pytest.approx(v * math.sqrt(20)) for n, v in zip(clipped_only.values(), [1.0, 1.1, 1.2, 1.3, 1.4]))
    _, record = _round(_server(max_update_norm=10.0, norm_bound="reject"), {1: big})
    assert record["rejected"] == {1: "update norm 4.472e+06 over the bound 10"} and "clipped" not in record
    params, record = _round(_server(max_update_norm="auto"), {1: big})
    norms = sorted(v * math.sqrt(20) for v in (1.0, 1.2, 1.3, 1.4, 1e6))
    assert record["norm_bound"] == pytest.approx(AUTO_NORM_MULTIPLE * norms[2])
    assert list(record["clipped"]) == [1]  # the honest clients are within 3x the median
    assert float(params["head.b"][0]) < 2.0  # the x1e6 client moved the model no further than an honest one could


def test_float16_updates_are_summed_without_overflow():
    g = {"w": np.zeros(2, np.float16)}
    out = weighted_average(
        g, [({"w": np.full(2, 20.0, np.float16)}, 5000.0), ({"w": np.full(2, 22.0, np.float16)}, 5000.0)]
    )
    assert out["w"].tolist() == [21.0, 21.0]


def test_trimmed_mean_trims_one_of_five_by_default_and_resists_a_huge_update():
    from fedmm.fl.strategy.trimmed_mean import trim_count, trimmed_mean

    assert [trim_count(n, 0.1) for n in (2, 3, 5, 10, 20)] == [0, 1, 1, 1, 2]
    assert trim_count(5, 0.0) == 0 and trim_count(4, 0.45) == 1
    clean = [{"w": np.array([v])} for v in (1.0, 2.0, 3.0, 4.0)]
    g = {"w": np.zeros(1)}
    assert trimmed_mean(g, clean + [{"w": np.array([2.5])}], 0.1)["w"][0] == pytest.approx(2.5)  # (2 + 2.5 + 3) / 3
    assert trimmed_mean(g, clean + [{"w": np.array([1e6])}], 0.1)["w"][0] == pytest.approx(3.0)  # (2 + 3 + 4) / 3


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_robust_statistics_refuse_nan_on_a_direct_call(name):
    from fedmm.fl.strategy.median import median
    from fedmm.fl.strategy.trimmed_mean import trimmed_mean

    fn = median if name == "median" else (lambda g, u: trimmed_mean(g, u, 0.2))
    with pytest.raises(ValueError, match="non-finite"):
        fn({"w": np.zeros(1)}, [{"w": np.array([1.0])}, {"w": np.array([np.nan])}, {"w": np.array([2.0])}])


def test_server_optimizer_moments_are_never_poisoned():
    s = STRATEGIES.get("fedadam")
    strategy = s.factory(s.config_cls())
    g = {"w": np.zeros(2, np.float32)}
    strategy.aggregate(1, g, [honest(0, params={"w": np.ones(2, np.float32)})])
    before = {k: v.copy() for k, v in strategy.m.items()}
    with pytest.raises(ValueError, match="non-finite server optimizer state"):
        strategy.aggregate(2, g, [honest(0, params={"w": np.array([np.inf, 1.0], np.float32)})])
    assert all(np.array_equal(strategy.m[k], before[k]) for k in before)
    out = strategy.aggregate(3, g, [honest(0, params={"w": np.ones(2, np.float32)})])
    assert np.isfinite(out["w"]).all()


def test_attacks_change_the_update_as_documented_and_meet_the_checks():
    received = {k: np.zeros(v.shape, np.float32) for k, v in G.items()}
    trained = {k: np.full(v.shape, 0.5, np.float32) for k, v in G.items()}

    def sent(name, **kw):
        params = attack_update(AttackConfig(name=name, clients=[1], **kw), trained, received, seed=0)
        return honest(1, params=params).to_bytes(), params

    for name, reason in (("nan", "non-finite"), ("inf", "non-finite"), ("shape", r"has shape \(1, 4\)")):
        with pytest.raises(Rejected, match=reason):
            check_reply(sent(name)[0], 1, G, MAY)
    assert (sent("scale", scale=10.0)[1]["head.b"] == 5.0).all()
    assert (sent("sign_flip", scale=0.0)[1]["head.b"] == -0.5).all()
    assert (sent("sign_flip", scale=3.0)[1]["head.b"] == -1.5).all()
    noisy = sent("gaussian", std=2.0)[1]["enc.w"]
    assert 0.5 < noisy.std() < 4.0 and not np.allclose(noisy, 0.5)
    up = check_reply(sent("scale")[0], 1, G, MAY)  # a scaled update is well-formed: only a norm bound stops it
    assert delta_norm(up.params, G) == pytest.approx(0.5e6 * math.sqrt(20), rel=1e-6)


def test_label_flip_moves_every_label_to_the_next_class():
    from fedmm.data.dataset import MultimodalDataset

    data = MultimodalDataset(labels=np.array([0, 1, 2, 2]), label_names=("a", "b", "c"), texts=["x"] * 4)
    assert flip_labels(data).labels.tolist() == [1, 2, 0, 0]
    multi = MultimodalDataset(
        labels=np.array([[1, 0, 0], [0, 1, 1]], np.float32), label_names=("a", "b", "c"), texts=["x"] * 2
    )
    assert flip_labels(multi).labels.tolist() == [[0, 1, 0], [1, 0, 1]]


def test_attack_needs_its_clients_and_a_known_name():
    from fedmm.config import load_settings

    base = ["task=synthetic", "model=fusion_tiny"]
    with pytest.raises(FedmmError, match=r"attack=scale needs attack.clients=\[ids\]"):
        load_settings(base + ["attack=scale"])
    with pytest.raises(FedmmError, match="unknown attack 'boom'"):
        load_settings(base + ["attack=boom"])
    with pytest.raises(FedmmError, match="max_update_norm must be null, auto or a positive number"):
        load_settings(base + ["max_update_norm=abc"])
    s = load_settings(base + ["attack=label_flip", "attack.clients=[1]", "max_update_norm=auto"])
    assert s.typed("attack", AttackConfig).clients == [1] and s.max_update_norm == "auto"


@pytest.mark.slow
def test_cli_runs_reject_a_byzantine_client_and_stop_cleanly_when_every_client_is(tmp_path, tiny_args):
    from conftest import fedmm, metrics

    fedmm(
        "run",
        *tiny_args,
        "num_clients=5",
        "rounds=2",
        "attack=nan",
        "attack.clients=[1]",
        "progress=false",
        f"output_dir={tmp_path / 'nan'}",
    )
    records = metrics(tmp_path / "nan")
    assert all(list(r["rejected"]) == ["1"] and 1 not in r["clients"] for r in records)
    from safetensors.numpy import load_file

    assert all(np.isfinite(v).all() for v in load_file(tmp_path / "nan" / "global.safetensors").values())
    out = fedmm(
        "run",
        *tiny_args,
        "rounds=2",
        "attack=inf",
        "attack.clients=[0,1,2,3]",
        "progress=false",
        f"output_dir={tmp_path / 'inf'}",
        check=False,
    )
    assert out.returncode == 2 and out.stderr.count("error:") == 1 and "Traceback" not in out.stderr
    assert "only 0 of 4 clients replied with a valid update" in out.stderr
    assert not (tmp_path / "inf" / "global.safetensors").exists()


def test_fedmap_never_keeps_a_non_finite_aggregator():
    import torch

    from fedmm.fl.strategy.base import StrategyContext

    entry = STRATEGIES.get("fedmap")
    s = entry.factory(entry.config_cls(n_trials_per_round=1))
    s.setup(StrategyContext(evaluate_val=lambda p: {"accuracy": 0.5}, metric="accuracy"))
    ups = [
        Update(
            client_id=i,
            params={"w": np.full(2, float(i), np.float32)},
            num_examples=5 + i,
            metrics={
                "f1_before": 0.1,
                "p_k": 0.2 + i / 10,
                "c_k": 0.1,
                "val_loss": 1.0 + i,
                "grad_norm": 1.0,
                "diversity": 0.5,
                "imbalance_ratio": 0.5,
            },
            modalities=frozenset({"image", "text"}),
        )
        for i in range(3)
    ]
    before = {k: v.clone() for k, v in s.student.state_dict().items()}
    s.optimizer.param_groups[0]["lr"] = float("inf")  # the distillation step now makes the student non-finite
    out = s.aggregate(1, {"w": np.zeros(2, np.float32)}, ups)
    assert all(torch.equal(v, before[k]) for k, v in s.student.state_dict().items())  # restored, not kept
    assert np.isfinite(out["w"]).all()


def test_delta_norm_and_clip_by_hand_on_a_non_zero_global():
    from fedmm.fl.validation import _names, clip_update

    g = {"a": np.array([1.0, 2.0], np.float16), "b": np.array([[-1.0]], np.float32)}
    sent = {"a": np.array([4.0, 6.0], np.float16), "b": np.array([[11.0]], np.float32)}  # delta (3, 4) and 12
    assert delta_norm(sent, g) == 13.0  # sqrt(9 + 16 + 144); adding the global instead would give another
    clipped = clip_update(sent, g, 13.0, 6.5)  # half the delta
    np.testing.assert_array_equal(clipped["a"], [2.5, 4.0])
    np.testing.assert_array_equal(clipped["b"], [[5.0]])
    assert clipped["a"].dtype == np.float16 and clipped["b"].dtype == np.float32
    assert clip_update(sent, g, 13.0, 13.0) is sent  # at the bound: unchanged
    assert _names(["a", "b", "c"]) == "a, b, c" and _names(list("abcde")) == "a, b, c and 2 more"


def test_edges_of_the_reply_check():
    # exactly max_examples is allowed; True is not a count; without a bound the message says inf
    assert check_reply(honest(1, n=100).to_bytes(), 1, G, MAY).num_examples == 100
    for n, expected, message in (
        (True, MAY, "num_examples=True outside [1, 100]"),
        (0, Expected(), "num_examples=0 outside [1, inf]"),
    ):
        with pytest.raises(Rejected) as e:
            check_reply(honest(1, n=n).to_bytes(), 1, G, expected)
        assert str(e.value) == message
    # the keys this client may send are its own list, not every global key; a listed key the model lacks is refused
    only_head = Expected(keys=frozenset({"head.b"}))
    with pytest.raises(Rejected, match=r"^sends keys it may not: enc.w$"):
        check_reply(honest(1).to_bytes(), 1, G, only_head)
    ghost = Expected(keys=frozenset({*G, "ghost.w"}))
    with pytest.raises(Rejected, match=r"^sends keys it may not: ghost.w$"):
        check_reply(honest(1, params={"ghost.w": np.ones(2, np.float32)}).to_bytes(), 1, G, ghost)


def test_the_automatic_norm_bound_needs_norms():
    assert norm_bound("auto", []) is None and norm_bound(None, [1.0]) is None and norm_bound(2, [9.0]) == 2.0
    assert norm_bound("auto", [1.0, 3.0, 10.0]) == AUTO_NORM_MULTIPLE * 3.0


def test_gaussian_and_scale_attacks_have_the_stated_size_and_keep_the_dtype():
    received = {"w": np.zeros(100_000, np.float16)}
    trained = {"w": np.full(100_000, 0.5, np.float16)}
    noisy = attack_update(AttackConfig(name="gaussian", std=0.3, clients=[1]), trained, received, seed=0)["w"]
    assert noisy.dtype == np.float16 and noisy.astype(np.float64).std() == pytest.approx(0.3, rel=0.02)
    assert abs(noisy.astype(np.float64).mean()) < 0.01  # around the global model: the training is thrown away
    scaled = attack_update(AttackConfig(name="scale", scale=4.0, clients=[1]), trained, received, seed=0)["w"]
    assert scaled.dtype == np.float16 and (scaled == 2.0).all()


def test_a_secure_sum_is_checked_key_by_key_and_by_its_weight():
    from fedmm.fl.privacy import Summed
    from fedmm.fl.server import checked_sum

    g = {"w": np.zeros(3, np.float32), "steps": np.zeros(1, np.int64)}
    ok = Summed(delta_sum={"w": np.ones(3)}, weight=1.0, clients=[0])  # one client under DP weighs 1
    assert checked_sum(ok, g, 1) is ok  # an integer key needs no sum
    for bad in ({}, {"w": np.ones(2)}, {"w": np.array([1.0, np.nan, 0.0])}):
        with pytest.raises(FedmmError, match="round 4: the securely aggregated sum is unusable at w"):
            checked_sum(Summed(delta_sum=bad, weight=1.0, clients=[0]), g, 4)
    with pytest.raises(FedmmError, match="round 2: the securely aggregated weights sum to 0.0"):
        checked_sum(Summed(delta_sum={"w": np.ones(3)}, weight=0.0, clients=[0, 1]), g, 2)
    assert checked_sum(Summed(delta_sum={"w": np.zeros(3)}, weight=0.0), g, 3).weight == 0.0  # nobody contributed
