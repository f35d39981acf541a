"""The server's round loop without a model: updates streamed into a running sum as they arrive, failed and silent
clients recorded, and too few replies stopping the round with a clear error."""

import numpy as np
import pytest

from fedmm.errors import FedmmError
from fedmm.fl.instructions import FitInstructions
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
def test_failed_and_silent_clients_are_recorded_and_the_rest_aggregated(strategy):
    def fit_clients(rnd, ids, payload, configs):
        return {0: reply(0), 1: RuntimeError("disk full"), 3: reply(3)}  # client 2 never answers

    s = STRATEGIES.get(strategy)
    _, record = server(s.factory(s.config_cls())).run_round(1, GLOBAL, fit_clients)
    assert record["clients"] == [0, 3] and record["num_clients"] == 2
    assert record["failures"] == {1: "RuntimeError: disk full", 2: "TimeoutError: no reply"}


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
