"""No reply from any site can stop the federation: malformed fit and client_eval replies, fake Flower SuperNodes
and NVFlare results are recorded rejections of that client, the round completes, and metrics.jsonl stays JSON.
Robust rules keep their promise: their bounds are checked before the run starts, and a rejected reply is a
Byzantine client caught."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedmm.errors import FedmmError, SiteRefusal
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.server import Server, ServerConfig
from fedmm.fl.strategy import STRATEGIES
from fedmm.fl.validation import check_eval_reply, norm_bound, Rejected
from fedmm.params import params_to_bytes
from fedmm.rundir import RunDir, json_safe

from test_trust import G, MAY, _server, honest

STRATEGY_NAMES = ["fedavg", "modality_avg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "median"]
STRATEGY_NAMES += ["trimmed_mean", "krum", "multikrum"]


def raw_update(meta: dict, params: dict | None = None) -> bytes:
    """A reply as a hostile client can build it: any JSON in the header, any tensors."""
    return params_to_bytes(params if params is not None else dict(G), {"fedmm_update": json.dumps(meta)})


def strict_json(record: dict) -> dict:
    return json.loads(json.dumps(json_safe(record), allow_nan=False))


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_extreme_figures_are_rejected_by_every_strategy(strategy):
    bad = {
        1: honest(1, metrics={"train_loss": 10**400}).to_bytes(),  # OverflowError in math.isfinite before
        2: honest(2, metrics={"train_loss": 1e308}).to_bytes(),  # x 10 examples: inf in the record before
        3: honest(3, n=10**400).to_bytes(),
    }
    server = _server(strategy)  # krum, multikrum: f=1, and the three rejected are Byzantine clients caught
    params, record = _round_of(server, bad)
    assert sorted(record["rejected"]) == [1, 2, 3] and record["clients"] == [0, 4]
    assert math.isfinite(record["train_loss"]) and strict_json(record)["round"] == 1


def _round_of(server, bad: dict):
    def fit_clients(rnd, ids, payload, instructions):
        return {c: bad.get(c, honest(c, 1.0 + 0.1 * c).to_bytes()) for c in ids}

    return server.run_round(1, dict(G), fit_clients)


def test_client_eval_replies_are_validated_and_recorded():
    server = _server(client_eval="final")
    evaluations = {
        0: raw_update(
            {"client_id": 0, "num_examples": 4, "metrics": {"accuracy": 10**400}, "modalities": [], "extra": {}}, {}
        ),
        1: raw_update({"client_id": 1, "num_examples": "x", "metrics": {}, "modalities": [], "extra": {}}, {}),
        2: honest(2).to_bytes(),  # tensors in an evaluation
        3: raw_update(
            {"client_id": 3, "num_examples": 6, "metrics": {"accuracy": 0.5}, "modalities": [], "extra": {}}, {}
        ),
        4: raw_update(
            {"client_id": 4, "num_examples": 0, "metrics": {}, "modalities": [], "extra": {}}, {}
        ),  # no test data
    }

    def fit_clients(rnd, ids, payload, instructions):
        if instructions[ids[0]].task == "evaluate":
            return {c: evaluations[c] for c in ids}
        return {c: honest(c).to_bytes() for c in ids}

    _, record = server.run_round(1, dict(G), fit_clients)
    assert record["client_eval"] == {"3": {"num_examples": 6, "accuracy": 0.5}}  # JSON keys
    assert sorted(record["rejected"]) == [0, 1, 2]
    assert record["rejected"][1] == "client_eval: num_examples=x outside [1, inf]"
    assert record["rejected"][2] == "client_eval: sends tensors in an evaluation reply"
    strict_json(record)


def test_the_round_loop_refuses_duplicates_and_clients_it_did_not_sample():
    def fit_clients(rnd, ids, payload, instructions):  # a user's runtime that yields as replies come
        yield 0, honest(0).to_bytes()
        yield 0, honest(0, 100.0).to_bytes()  # a second reply: ignored
        yield 7, honest(7).to_bytes()  # never sampled, no expectations at all
        yield "x", b"junk"
        for c in ids[1:]:
            yield c, honest(c).to_bytes()

    params, record = _server().run_round(1, dict(G), fit_clients)
    assert record["clients"] == [0, 1, 2, 3, 4] and record["rejected"] == {
        "7": "was not sampled this round",
        "x": "was not sampled this round",
    }
    np.testing.assert_allclose(params["head.b"], 1.0)  # the x100 second reply of client 0 took no part
    _, record = _server().run_round(1, dict(G), lambda r, ids, p, i: {**{c: honest(c).to_bytes() for c in ids}, 9: b""})
    assert record["rejected"] == {"9": "was not sampled this round"}


def test_a_reply_that_is_not_bytes_is_a_rejection():
    _, record = _server().run_round(
        1, dict(G), lambda r, ids, p, i: {c: ({"a": 1} if c == 2 else honest(c).to_bytes()) for c in ids}
    )
    assert record["rejected"] == {2: "not a fedmm update (a dict, not bytes)"}


def test_metrics_jsonl_stays_strict_json(tmp_path):
    rd = RunDir(tmp_path / "run").create()
    rd.append_metrics(
        {"round": 1, "train_loss": float("nan"), "eval_x": float("inf"), "nested": {"a": [float("-inf")]}}
    )
    line = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert json.loads(line) == {"round": 1, "train_loss": None, "eval_x": None, "nested": {"a": [None]}}
    assert "NaN" not in line and "Infinity" not in line


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "client_id": st.one_of(st.just(1), JSONISH),
        "num_examples": st.one_of(st.integers(-5, 200), JSONISH),
        "metrics": st.one_of(st.dictionaries(st.sampled_from(["train_loss", "seconds", "acc"]), JSONISH), JSONISH),
        "modalities": st.one_of(st.just(["image", "text"]), JSONISH),
        "extra": JSONISH,
    },
)
TENSORS = st.sampled_from(
    [
        dict(G),
        {},
        {"head.b": np.ones(3, np.float32)},
        {"head.b": np.full(4, np.nan, np.float32)},
        {"head.b": np.ones(4, np.int64)},
        {"other": np.ones(1, np.float32)},
        {"head.b": np.full(4, 1e300)},
    ]
)


@settings(max_examples=60, deadline=None)
@given(meta=FIELDS, tensors=TENSORS, as_eval=st.booleans())
def test_fuzzed_replies_are_rejected_with_a_reason_or_accepted_and_the_round_completes(meta, tensors, as_eval):
    reply = raw_update(meta, tensors)
    server = _server(client_eval="final" if as_eval else "none")

    def fit_clients(rnd, ids, payload, instructions):
        evaluating = instructions[ids[0]].task == "evaluate"
        if evaluating:
            good = {
                c: raw_update(
                    {"client_id": c, "num_examples": 3, "metrics": {"acc": 1.0}, "modalities": [], "extra": {}}, {}
                )
                for c in ids
            }
            return {**good, 1: reply}
        return {c: reply if c == 1 and not as_eval else honest(c).to_bytes() for c in ids}

    _, record = server.run_round(1, dict(G), fit_clients)
    decided = (1 in record["clients"]) if not as_eval else ("1" in record["client_eval"])
    reason = record.get("rejected", {}).get(1, "")  # the record has no "rejected" when nobody was
    assert decided != bool(reason), (meta, record)  # accepted, or rejected with a reason: never both, never neither
    assert record["clients_replied"] >= 4 and strict_json(record)["round"] == 1


def test_an_evaluation_reply_from_another_client_or_with_bools_is_rejected():
    for meta, why in (
        ({"client_id": 2, "num_examples": 3, "metrics": {}}, "claims to be client 2"),
        ({"client_id": True, "num_examples": 3, "metrics": {}}, "claims to be client True"),
        ({"client_id": 1, "num_examples": 3, "metrics": {"acc": True}}, "reports metrics that are not finite"),
    ):
        with pytest.raises(Rejected, match=why):
            check_eval_reply(raw_update({**meta, "modalities": [], "extra": {}}, {}), 1)


# -- fake SuperNodes: the real server side of runtime=flower, fed crafted Flower messages --------------------------


def test_fake_supernodes_with_malformed_replies_are_refused_and_the_run_goes_on(flower_messages):
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedmm.runtime.flower.messages import query_reply, refusal_reply, train_reply
    from fedmm.runtime.flower.server import GridClients

    claims = {11: 0, 12: 1, 13: 2, 14: "abc", 15: None, 16: 1.9, 17: 99, 18: 3, 19: 4}
    trains = {
        0: lambda m: train_reply(m, honest(0).to_bytes()),
        1: lambda m: Message(RecordDict({"nothing": ConfigRecord({"a": 1})}), reply_to=m),  # no update record
        2: lambda m: refusal_reply(m, SiteRefusal("plugin", "x" * 1000)),
        3: lambda m: refusal_reply(m, SiteRefusal("made-up-code", "\x1b[31mred")),
        4: lambda m: train_reply(m, honest(4).to_bytes()),
    }

    class Grid:
        def get_node_ids(self):
            return sorted(claims)

    class Clients(GridClients):
        def _exchange(self, messages, timeout):
            out = []
            for m in messages:
                node = m.metadata.dst_node_id
                if m.metadata.message_type == "query":
                    claim = claims[node]
                    empty = Message(RecordDict(), reply_to=m)
                    out.append(empty if claim is None else query_reply(m, claim))
                else:
                    out.append(trains[{v: k for k, v in self.nodes.items()}[node]](m))
            return out

    clients = Clients(Grid(), num_clients=5, min_clients=1, request={}, round_timeout=1, connect_timeout=1)
    assert clients.nodes == {0: 11, 1: 12, 2: 13, 3: 18, 4: 19}  # 'abc', no record, 1.9 and 99 refused
    _, record = _server().run_round(1, dict(G), clients)
    assert record["clients"] == [0, 4]
    assert record["failures"][1] == "ValueError: its reply has no readable update record"
    assert (
        record["failures"][2].startswith("SiteRefusal: site refused (plugin): xxx") and len(record["failures"][2]) < 400
    )
    assert record["failures"][3] == "SiteRefusal: site refused (site_error): [31mred"
    strict_json(record)


def test_nvflare_results_with_malformed_payloads_are_refused():
    pytest.importorskip("nvflare")
    from nvflare.app_common.abstract.fl_model import FLModel

    from fedmm.runtime.nvflare.controller import result_of

    good = np.frombuffer(honest(0).to_bytes(), np.uint8)
    cases = {
        None: "no result",
        FLModel(params={}): "has no update",
        FLModel(params=None): "has no update",
        FLModel(params={"update": "abc"}): "has no update",
        FLModel(params={"update": good.astype(np.float32)}): "has no update",
        FLModel(
            params={}, meta={"refusal": {"code": "site_owned", "message": "task.path is this site's"}}
        ): "site_owned",
        FLModel(params={}, meta={"refusal": "not a mapping"}): "site_error",
    }
    for result, words in cases.items():
        reply = result_of(result, "site-1", 5)
        assert isinstance(reply, BaseException) and words in str(reply), (result, reply)
    assert result_of(FLModel(params={"update": good}), "site-1", 5) == good.tobytes()


# -- robust rules keep their promise --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, f, n, needs",
    [("krum", 1, 4, 5), ("multikrum", 2, 6, 7), ("bulyan", 1, 6, 7), ("bulyan", 2, 10, 11)],
)
def test_krum_and_bulyan_refuse_rounds_too_small_for_their_f(name, f, n, needs):
    entry = STRATEGIES.get(name)
    with pytest.raises(FedmmError) as e:
        entry.factory(entry.config_cls(f=f)).check_round_size(n)
    assert str(e.value) == (
        f"strategy={name} with strategy.f={f} needs at least {needs} clients per round "
        f"({2 if 'krum' in name else 4}f + 3), but a round samples {n}; lower strategy.f or sample more clients "
        f"(clients_per_round)"
    )
    entry.factory(entry.config_cls(f=f)).check_round_size(needs)  # the bound itself is allowed


def test_bulyan_at_exactly_4f_plus_3_tolerates_the_client_it_rejects():
    entry = STRATEGIES.get("bulyan")
    conf = dict(num_clients=7, per_round=7, min_clients=1, rounds=1, seed=0)
    ins = FitInstructions(round=0, seed=0, lr=0.1, local_epochs=1, batch_size=8, weight_decay=0.0)
    server = Server(
        entry.factory(entry.config_cls(f=1)), ServerConfig(**conf), lambda p: {}, ins, {c: MAY for c in range(7)}
    )
    nan = honest(3, params={"head.b": np.full(4, np.nan, np.float32)}).to_bytes()
    params, record = server.run_round(
        1, dict(G), lambda r, ids, p, i: {c: nan if c == 3 else honest(c, 1.0).to_bytes() for c in ids}
    )
    assert record["rejected"] == {3: "non-finite values in head.b"} and record["strategy_f"] == 0
    np.testing.assert_allclose(params["head.b"], 1.0)
    # a client that fails (no reply) is not a caught attacker: f is lowered to what 6 updates support, and said
    params, record = server.run_round(
        1, dict(G), lambda r, ids, p, i: {c: TimeoutError() if c == 3 else honest(c, 1.0).to_bytes() for c in ids}
    )
    assert record["strategy_f"] == 0 and 3 in record["failures"]


def test_the_automatic_norm_bound_is_not_raised_by_one_of_two():
    assert norm_bound("auto", [0.01, 9801.0]) == pytest.approx(0.02)  # the mean of the two would be 9801
    assert norm_bound("auto", [1.0, 2.0, 3.0, 1e6]) == 4.0  # two of four large: still the honest lower median
    server = _server(max_update_norm="auto")
    server.cfg.num_clients = server.cfg.per_round = 2
    big = honest(1, 1e4).to_bytes()
    params, record = server.run_round(1, dict(G), lambda r, ids, p, i: {0: honest(0, 0.0025).to_bytes(), 1: big})
    assert float(np.abs(params["head.b"]).max()) < 0.01 and 1 in record["clipped"]


def test_step_weighted_fedavg_weighs_by_batches_and_rejects_a_reply_without_them():
    """strategy.weight_by=steps (NVFlare's FedAvg over NUM_STEPS_CURRENT_ROUND): the mean weighs each client by the
    batches it trained on, not its example count; a reply that reports none is a recorded rejection."""
    from fedmm.fl.strategy.fedavg import FedAvg, FedAvgConfig

    server = _server()
    server.strategy = FedAvg(FedAvgConfig(weight_by="steps"))
    replies = {
        0: honest(0, 1.0, n=10, metrics={"train_loss": 0.5, "batches": 3.0}).to_bytes(),
        1: honest(1, 2.0, n=90, metrics={"train_loss": 0.5, "batches": 1.0}).to_bytes(),
        2: honest(2, 9.0, n=10, metrics={"train_loss": 0.5}).to_bytes(),
        3: honest(3, 9.0, n=10, metrics={"train_loss": 0.5, "batches": 0.0}).to_bytes(),
    }
    params, record = server.run_round(
        1, dict(G), lambda rnd, ids, payload, ins: {c: replies[c] for c in ids if c in replies}
    )
    assert sorted(record["rejected"]) == [2, 3] and "batches" in record["rejected"][2]
    for v in params.values():  # (3 x 1.0 + 1 x 2.0) / 4, where example counts would give (10 + 180) / 100 = 1.9
        np.testing.assert_allclose(v, 1.25)
    with pytest.raises(FedmmError, match="strategy.weight_by must be examples or steps"):
        FedAvgConfig(weight_by="batches")


def test_malformed_control_variates_are_rejected_and_scaffold_moves_c_by_the_honest_ones():
    """SCAFFOLD's delta c_i travels beside the update: one of another shape, non-finite, an integer tensor, for a key
    the client may not send, or for a tensor it did not send, is a rejection of that client, and c moves by the
    honest replies only."""
    from fedmm.fl.strategy import StrategyContext

    w = np.full((4, 4), 0.1, np.float32)
    bad = {
        1: honest(1, strategy_params={"enc.w": np.zeros((2, 2), np.float32)}).to_bytes(),
        2: honest(2, strategy_params={"enc.w": np.full((4, 4), np.nan, np.float32)}).to_bytes(),
        3: honest(3, strategy_params={"other": np.zeros(1, np.float32)}).to_bytes(),
        4: honest(4, params={"head.b": np.ones(4, np.float32)}, strategy_params={"enc.w": w}).to_bytes(),
    }
    server = _server("scaffold")
    server.strategy.setup(StrategyContext(num_clients=5))
    _, record = _round_of(server, {**bad, 0: honest(0, strategy_params={"enc.w": w}).to_bytes()})
    assert sorted(record["rejected"]) == [1, 2, 3, 4] and record["clients"] == [0]
    assert "shape" in record["rejected"][1] or "(2, 2)" in record["rejected"][1]
    assert "non-finite" in record["rejected"][2] and "may not" in record["rejected"][3]
    assert "did not send" in record["rejected"][4]
    np.testing.assert_allclose(server.strategy.c["enc.w"], w / 5)
    np.testing.assert_array_equal(server.strategy.c["head.b"], 0)
