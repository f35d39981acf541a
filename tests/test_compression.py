"""Compressed updates: round-trip error bounds of each kind (pure functions, no model), error feedback that loses
nothing over rounds, the client's residual store, and a compressed federated run that resumes exactly."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY
from fedmm import cli
from fedmm.client.state import ClientState
from fedmm.errors import FedmmError
from fedmm.fl.compression import SCALE, compress_update, decode, encode
from fedmm.fl.validation import check_reply
from fedmm.fl.update import Update
from fedmm.params import params_to_bytes
from test_cli import kill_and_resume


def deltas(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": (rng.standard_normal((37, 11)) * 1e-3).astype(np.float32),
        "b": (rng.standard_normal(5) * 10.0 ** rng.integers(-6, 2, 5)).astype(np.float32),
        "spiky": np.concatenate([rng.standard_normal(600) * 1e-4, [5.0]]).astype(np.float32),
        "zero": np.zeros(3, np.float32),
    }


@pytest.mark.parametrize("kind, dtype, relative", [("fp16", np.float16, 2.0**-11), ("bf16", np.uint16, 2.0**-8)])
def test_half_precision_kinds_keep_the_relative_error_under_their_unit_roundoff(kind, dtype, relative):
    d = deltas()
    sent, meta = encode(d, kind)
    assert all(v.dtype == dtype and v.shape == d[k].shape for k, v in sent.items())
    back = decode(sent, meta)
    for k in d:
        tiny = 6.1e-5 * 2.0**-10 if kind == "fp16" else 0.0  # fp16's subnormal spacing
        assert np.all(np.abs(back[k] - d[k]) <= relative * np.abs(d[k]) + tiny), k


def test_bf16_rounds_to_nearest_even_like_torch():
    x = np.random.default_rng(1).standard_normal(10_000).astype(np.float32) * 100
    ours = decode(*encode({"x": x}, "bf16"))["x"]
    np.testing.assert_array_equal(ours, torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def test_bf16_exact_ties_round_to_the_even_neighbour():
    # Lower 16 bits exactly 0x8000: halfway between two bf16 values. An even upper half stays (rounds down), an odd
    # one rounds up; rounding ties up (or truncating) would differ in one of the two cases.
    upper = np.array([0x3F80, 0x3F81, 0xBF80, 0xBF81, 0x4049, 0x404A], dtype=np.uint32)
    x = ((upper << 16) | 0x8000).view(np.float32)
    ours = decode(*encode({"x": x}, "bf16"))["x"].view(np.uint32) >> 16
    assert ours.tolist() == [0x3F80, 0x3F82, 0xBF80, 0xBF82, 0x404A, 0x404A]
    np.testing.assert_array_equal(ours, torch.from_numpy(x).to(torch.bfloat16).float().numpy().view(np.uint32) >> 16)


def test_int8_error_is_at_most_half_a_step_per_tensor_or_per_block():
    d = deltas()
    per_tensor = decode(*encode(d, "int8"))
    blocks = decode(*encode(d, "int8_block", block_size=64))
    for k, x in d.items():
        step = np.abs(x).max() / 127
        assert np.all(np.abs(per_tensor[k] - x) <= step / 2 + 1e-12), k
        flat, back = x.ravel(), blocks[k].ravel()
        for s in range(0, flat.size, 64):
            block_step = np.abs(flat[s : s + 64]).max() / 127
            assert np.all(np.abs(back[s : s + 64] - flat[s : s + 64]) <= block_step / 2 + 1e-12), (k, s)
    # One spike costs the small values their precision per tensor, but only within its own block.
    small = slice(0, 512)
    assert not per_tensor["spiky"][small].any()  # all below half the spike's step: rounded to zero
    assert np.abs(blocks["spiky"][small] - d["spiky"][small]).max() < 0.02 * np.abs(d["spiky"][small]).max()
    sent, _ = encode(d, "int8_block", block_size=64)
    assert sent["spiky"].dtype == np.int8 and sent["spiky" + SCALE].shape == (10,)  # ceil(601 / 64) scales


def test_bytes_on_the_wire_shrink_by_the_expected_factor():
    d = {"w": np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)}
    full = len(params_to_bytes(d))
    assert len(params_to_bytes(*encode(d, "fp16"))) < full / 2 + 512
    assert len(params_to_bytes(*encode(d, "int8"))) < full / 4 + 512
    assert len(params_to_bytes(*encode(d, "int8_block", 256))) < full / 4 * (1 + 4 / 256) + 512


def test_error_feedback_delivers_every_bit_eventually():
    rng = np.random.default_rng(3)
    received = {"w": rng.standard_normal(1000).astype(np.float32)}
    residual, true_sum, sent_sum = None, np.zeros(1000), np.zeros(1000)
    for _ in range(20):
        trained = {"w": received["w"] + (rng.standard_normal(1000) * 1e-3).astype(np.float32)}
        tensors, meta, residual = compress_update(trained, received, residual, "int8_block", 128)
        true_sum += trained["w"] - received["w"]
        sent_sum += decode(tensors, meta)["w"]
    # Telescoping: what arrived plus what the client still holds is everything it computed.
    np.testing.assert_allclose(sent_sum + residual["w"], true_sum, atol=1e-6)
    assert np.abs(residual["w"]).max() < 2e-5  # at most half a quantisation step
    without = np.zeros(1000)
    rng = np.random.default_rng(3)
    for _ in range(20):
        trained = {"w": received["w"] + (rng.standard_normal(1000) * 1e-3).astype(np.float32)}
        tensors, meta, _ = compress_update(trained, received, None, "int8_block", 128)
        without += decode(tensors, meta)["w"]
    assert np.abs(without - true_sum).max() > np.abs(sent_sum - true_sum).max()


def test_the_server_rebuilds_the_clients_parameters_from_the_delta():
    rng = np.random.default_rng(0)
    global_params = {"a": rng.standard_normal((4, 4)).astype(np.float32), "b": np.ones(3, np.float32)}
    trained = {"a": global_params["a"] + 0.01}  # a client that only trains "a" (it misses b's modality)
    tensors, meta, _ = compress_update(trained, global_params, None, "fp16")
    update = Update.from_bytes(Update(client_id=2, params=tensors, num_examples=7, compression=meta).to_bytes())
    assert update.compression == meta
    rebuilt = check_reply(update.to_bytes(), 2, global_params).params  # the server's path
    assert set(rebuilt) == {"a"} and rebuilt["a"].dtype == np.float32
    np.testing.assert_allclose(rebuilt["a"], trained["a"], atol=1e-5)
    with pytest.raises(FedmmError, match="compression.kind must be one of"):
        encode(trained, "int4")


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_round_reads_the_newest_residual_written_before_it_and_keeps_it(tmp_path, on_disk):
    state = ClientState(tmp_path if on_disk else None)
    assert state.load_residual(0, 1) is None
    for rnd in (1, 3, 4):  # client 0 is sampled in rounds 1, 3 and 4
        state.save_residual(0, rnd, {"r": np.full(2, rnd, np.float32)})
    assert state.load_residual(0, 4)["r"][0] == 3  # a rerun of round 4 (after a crash) starts from round 3's
    assert state.load_residual(0, 5)["r"][0] == 4
    assert state.load_residual(1, 5) is None
    if on_disk:
        assert sorted(p.name for p in (tmp_path / "client_0").iterdir()) == [
            "residual-r3.safetensors",
            "residual-r4.safetensors",
        ]


@pytest.mark.run
def test_compressed_run_sends_fewer_bytes_and_learns(tmp_path, capsys):
    common = [*TINY, "rounds=3", "num_clients=3", "progress=false"]
    finals = {}
    for kind in ("none", "int8_block"):
        assert cli.main(["run", *common, f"compression.kind={kind}", f"output_dir={tmp_path / kind}"]) == 0
        finals[kind] = [json.loads(l) for l in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()]
    assert finals["int8_block"][0]["bytes_up"] < 0.5 * finals["none"][0]["bytes_up"]
    assert finals["int8_block"][0]["bytes_down"] == finals["none"][0]["bytes_down"]  # the global model is exact
    assert abs(finals["int8_block"][-1]["eval_accuracy"] - finals["none"][-1]["eval_accuracy"]) < 0.05
    assert cli.main(["run", *common, "compression.kind=int5", f"output_dir={tmp_path / 'bad'}"]) == 2
    assert "compression.kind must be one of" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_killed_compressed_run_with_error_feedback_resumes_exactly(tmp_path):
    kill_and_resume(tmp_path, [*TINY, "rounds=4", "num_clients=3", "compression.kind=int8_block"])


def test_bf16_encodes_float64_and_float16_deltas_as_their_float32_values():
    def bf16(x):
        return decode(*encode({"w": x}, "bf16"))["w"]

    values = np.array([1.0, -2.5, 3.14159, 1e-3], np.float64)
    np.testing.assert_array_equal(bf16(values), bf16(values.astype(np.float32)))
    half = values.astype(np.float16)
    np.testing.assert_array_equal(bf16(half), bf16(half.astype(np.float32)))


def test_compress_update_sends_float32_deltas_and_blocks_of_256_by_default():
    received = {"w": np.linspace(-1, 1, 600).astype(np.float16)}
    trained = {"w": (received["w"] + np.float16(0.5)).astype(np.float16)}
    tensors, meta, residual = compress_update(trained, received, None, "none")
    assert tensors["w"].dtype == np.float32 and residual["w"].dtype == np.float32
    _, meta, _ = compress_update(trained, received, None, "int8_block")
    assert json.loads(meta["fedmm_compression"])["block_size"] == 256


def test_block_size_below_one_is_refused():
    with pytest.raises(FedmmError, match=r"^compression.block_size must be at least 1 \(got 0\)$"):
        encode({"w": np.zeros(3, np.float32)}, "int8_block", block_size=0)


def test_quantiser_edges_block_of_one_zero_blocks_and_float32_outputs():
    import warnings

    values = np.array([1.0, 1e-3, -0.25], np.float64)
    tensors, meta = encode({"w": values}, "int8_block", block_size=1)  # every value its own scale: nearly exact
    np.testing.assert_allclose(decode(tensors, meta)["w"], values, rtol=1e-6)
    assert tensors["w" + SCALE].dtype == np.float32 and decode(tensors, meta)["w"].dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-zero block divides by a safe scale of 1: no 0/0
        tensors, meta = encode({"w": np.zeros(4, np.float32)}, "int8_block", block_size=2)
    assert tensors["w"].tolist() == [0, 0, 0, 0] and decode(tensors, meta)["w"].tolist() == [0.0] * 4
    assert decode(*encode({"w": values}, "fp16"))["w"].dtype == np.float32
    assert json.loads(encode({"w": values}, "int8_block")[1]["fedmm_compression"])["block_size"] == 256
    with pytest.raises(FedmmError) as e:
        encode({"w": values}, "zip")
    assert str(e.value) == "compression.kind must be one of none, fp16, bf16, int8, int8_block (got 'zip')"


def test_compress_update_uses_its_block_size_and_a_residual_without_the_key():
    received = {"w": np.zeros(8, np.float32)}
    trained = {"w": np.linspace(-1, 1, 8).astype(np.float32)}
    _, meta, _ = compress_update(trained, received, None, "int8_block", block_size=4)
    assert json.loads(meta["fedmm_compression"])["block_size"] == 4
    plain = compress_update(trained, received, None, "int8")
    empty = compress_update(trained, received, {}, "int8")  # a residual that lacks the key adds nothing
    np.testing.assert_array_equal(plain[0]["w"], empty[0]["w"])
    np.testing.assert_array_equal(plain[2]["w"], empty[2]["w"])


def test_int8_codes_are_the_nearest_under_the_scale_that_travels_and_the_rebuild_rounds_once():
    from fedmm.fl.compression import apply_delta

    # max 1.7277515 -> float32 scale 0.013604342; 1.4352580 / scale is 105.49999627, which float32 rounds to 105.5
    x = np.array([1.4352580308914185, 1.7277514934539795, -0.26284196972846985, -1.4170292615890503], np.float32)
    tensors, meta = encode({"w": x}, "int8")
    scale = float(tensors["w" + SCALE][0])
    assert tensors["w"].tolist() == [105, 127, -19, -104]
    assert np.all(np.abs(decode(tensors, meta)["w"].astype(np.float64) - x) <= scale / 2)
    # float16 1.0 + (2^-11 + 2^-24): just above half a float16 step, so it rounds up; a float32 sum would first
    # round to the exact half and then to even (1.0)
    delta = np.array([2.0**-11 + 2.0**-24], np.float32)
    assert apply_delta({"w": delta}, {"w": np.ones(1, np.float16)})["w"][0] == np.float16(1 + 2.0**-10)
