"""The server's round loop without a model: updates streamed into a running sum as they arrive, failed and silent
clients recorded, and too few replies stopping the round with a clear error."""

from dataclasses import replace

import numpy as np
import pytest

from fedmm.errors import FedmmError
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.privacy import Accountant
from fedmm.fl.update import Update
from fedmm.fl.server import Server, ServerConfig
from fedmm.fl.strategy import STRATEGIES
from fedmm.fl.strategy.fedavg import FedAvg, FedAvgConfig, weighted_average

GLOBAL = {"w": np.zeros(3, np.float32)}


def reply(cid: int) -> bytes:
    return Update(
        client_id=cid,
        params={"w": np.full(3, cid, np.float32)},
        num_examples=cid + 1,
        metrics={"train_loss": float(cid), "seconds": 0.1},
    ).to_bytes()


def server(strategy, num_clients=4, min_clients=1) -> Server:
    cfg = ServerConfig(num_clients=num_clients, per_round=num_clients, min_clients=min_clients, rounds=1, seed=0)
    instructions = FitInstructions(round=0, seed=0, lr=0.1, local_epochs=1, batch_size=8, weight_decay=0.0)
    return Server(strategy, cfg, evaluate=lambda p: {"accuracy": 0.5}, instructions=instructions)


class Recording(FedAvg):
    def __init__(self, events):
        super().__init__(FedAvgConfig())
        self.events = events

    def aggregate(self, rnd, global_params, updates):
        def seen():
            for u in updates:
                self.events.append(f"add {u.client_id}")
                yield u

        return super().aggregate(rnd, global_params, seen())


def test_a_streaming_strategy_adds_each_update_before_the_next_client_replies():
    events = []

    def fit_clients(rnd, ids, payload, configs):
        for cid in ids:
            events.append(f"reply {cid}")
            yield cid, reply(cid)

    params, record = server(Recording(events)).run_round(1, GLOBAL, fit_clients)
    assert events == [e for cid in range(4) for e in (f"reply {cid}", f"add {cid}")]
    expected = weighted_average(GLOBAL, [({"w": np.full(3, c, np.float32)}, c + 1) for c in range(4)])
    np.testing.assert_array_equal(params["w"], expected["w"])
    assert record["num_examples"] == 10 and record["clients"] == [0, 1, 2, 3]
    assert record["train_loss"] == pytest.approx(sum(c * (c + 1) for c in range(4)) / 10)
    assert record["bytes_up"] == sum(len(reply(c)) for c in range(4))


@pytest.mark.parametrize("strategy", ["fedavg", "median"])  # streaming and list-based
def test_failed_and_silent_clients_are_recorded_and_the_rest_aggregated(strategy, caplog):
    def fit_clients(rnd, ids, payload, configs):
        return {0: reply(0), 1: RuntimeError("disk full"), 3: reply(3)}  # client 2 never answers

    s = STRATEGIES.get(strategy)
    _, record = server(s.factory(s.config_cls())).run_round(1, GLOBAL, fit_clients)
    assert record["clients"] == [0, 3] and record["num_clients"] == 2
    assert record["failures"] == {1: "RuntimeError: disk full", 2: "TimeoutError: no reply"}
    assert "round 1: client 1 failed: RuntimeError: disk full" in caplog.messages  # the whole line


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
def test_too_few_replies_stop_the_round_with_a_clear_error(strategy):
    def fit_clients(rnd, ids, payload, configs):
        yield 0, reply(0)
        yield 1, ConnectionError("site 1 went away")

    s = STRATEGIES.get(strategy)
    with pytest.raises(
        FedmmError,
        match=r"round 1: only 1 of 4 clients replied with a valid update \(client 1: "
        r"ConnectionError: site 1 went away\), fewer than min_clients=2; .*resume",
    ):
        server(s.factory(s.config_cls()), min_clients=2).run_round(1, GLOBAL, fit_clients)


def test_a_clients_own_error_is_not_mistaken_for_too_few_replies():
    def fit_clients(rnd, ids, payload, configs):
        raise ValueError("batch_size must be positive")
        yield

    with pytest.raises(ValueError, match="batch_size must be positive"):
        server(FedAvg(FedAvgConfig())).run_round(1, GLOBAL, fit_clients)


def answer_all(rnd, ids, payload, configs):
    return {cid: reply(cid) for cid in ids}


@pytest.mark.parametrize("rounds, eval_every", [(1, 1), (5, 1), (5, 2), (7, 3), (6, 3), (4, 10)])
def test_every_eval_every_th_round_and_always_the_last_is_evaluated(rounds, eval_every):
    """Round r is scored when r is a multiple of eval_every, and the final round always is (a run that ends between
    two evaluations still reports its model)."""
    scored = []
    s = server(FedAvg(FedAvgConfig()))
    s.cfg = replace(s.cfg, rounds=rounds, eval_every=eval_every, client_eval="final")
    s.evaluate = lambda p: scored.append(len(scored)) or {"accuracy": 0.5}

    def fit_clients(rnd, ids, payload, configs):  # client_eval: evaluate requests get scores, not updates
        assert all(ins.round == rnd for ins in configs.values())  # each request names its round
        if next(iter(configs.values())).task == "evaluate":
            scores = Update(client_id=0, params={}, num_examples=3, metrics={"accuracy": 1.0})
            return {c: replace(scores, client_id=c).to_bytes() for c in ids}
        return answer_all(rnd, ids, payload, configs)

    records = [s.run_round(r, GLOBAL, fit_clients)[1] for r in range(1, rounds + 1)]
    expected = [r for r in range(1, rounds + 1) if r % eval_every == 0 or r == rounds]
    assert [r["round"] for r in records if "eval_accuracy" in r] == expected and len(scored) == len(expected)
    assert [r["round"] for r in records if r.get("client_eval")] == [rounds]  # client_eval=final: the last round only


def test_local_dp_splits_the_noise_among_the_clients_sampled_this_round():
    """privacy.mode=local with Poisson sampling: each sampled client adds std z * C / sqrt(m), m the clients sampled
    in this round (not all clients, not the expected number), so the shares sum to the central noise z * C."""
    s = server(FedAvg(FedAvgConfig()), num_clients=12)
    s.privacy = Accountant(clip_norm=0.5, noise_multiplier=1.5, delta=1e-5, rate=0.4, num_clients=12, local=True)
    told = {}

    def fit_clients(rnd, ids, payload, configs):
        told[rnd] = configs
        return answer_all(rnd, ids, payload, configs)

    for rnd in (1, 2, 3):
        s.run_round(rnd, GLOBAL, fit_clients)
    sizes = {rnd: len(c) for rnd, c in told.items()}
    assert len(set(sizes.values())) > 1 and all(0 < m < 12 for m in sizes.values())  # the seed makes them differ
    for rnd, configs in told.items():
        assert list(configs) == s.privacy.sample(0, rnd)
        for ins in configs.values():
            assert ins.dp_clip_norm == 0.5
            assert ins.dp_noise_std == pytest.approx(1.5 * 0.5 / np.sqrt(sizes[rnd]), rel=1e-12)


def test_a_site_that_cannot_evaluate_is_logged_and_left_out(caplog):
    s = server(FedAvg(FedAvgConfig()), num_clients=3)
    s.cfg = replace(s.cfg, client_eval="final")
    scored = Update(client_id=0, params={}, num_examples=3, metrics={"accuracy": 1.0})

    def fit_clients(rnd, ids, payload, configs):
        if next(iter(configs.values())).task != "evaluate":
            return answer_all(rnd, ids, payload, configs)
        return {0: scored.to_bytes(), 1: RuntimeError("no disk"), 2: replace(scored, client_id=2).to_bytes()}

    with caplog.at_level("WARNING", logger="fedmm"):
        _, record = s.run_round(1, GLOBAL, fit_clients)
    assert set(record["client_eval"]) == {"0", "2"}
    assert "round 1: client 1 did not evaluate: RuntimeError: no disk" in caplog.messages


def test_a_secure_sum_is_recorded_with_each_contributors_examples_and_loss():
    """Secure aggregation: the runtime hands the server one Summed; the record counts the contributors' examples
    and loss from their plaintext metrics, and the strategy steps to the weighted mean."""
    from fedmm.fl.privacy import Summed

    def fit_clients(rnd, ids, payload, configs):
        return Summed(
            delta_sum={"w": np.full(3, 10.0)},  # sum of weight x delta: 2 x 1.0 + 8 x 1.0
            weight=10.0,
            clients=[0, 2],
            metrics={0: {"num_examples": 2, "train_loss": 1.0}, 2: {"num_examples": 8, "train_loss": 0.5}},
            bytes_up=123,
        )

    params, record = server(FedAvg(FedAvgConfig())).run_round(1, GLOBAL, fit_clients)
    np.testing.assert_allclose(params["w"], 1.0)
    assert record["clients"] == [0, 2] and record["num_examples"] == 10 and record["bytes_up"] == 123
    assert record["train_loss"] == pytest.approx((2 * 1.0 + 8 * 0.5) / 10)
