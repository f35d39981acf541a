import numpy as np
import pytest
from safetensors.numpy import load_file

import fedmm
from conftest import TINY, initial_server

from fedmm.fl.update import Update
from fedmm.fl.strategy.fedavg import FedAvg, FedAvgConfig, weighted_average


def test_weighted_average_is_example_weighted_mean():
    # Prepare
    rng = np.random.default_rng(0)
    g = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    clients = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in g.items()} for _ in range(3)]
    n = [10, 30, 60]
    # Execute
    out = weighted_average(g, list(zip(clients, n)))
    # Assert
    for k in g:
        expected = (10 * clients[0][k] + 30 * clients[1][k] + 60 * clients[2][k]) / 100
        np.testing.assert_allclose(out[k], expected, rtol=1e-6)
        assert out[k].dtype == g[k].dtype


def test_missing_key_counts_as_the_unchanged_global_value():
    # A non-zero global: counting the missing key as zero (a plausible bug) gives 1.0, not 2.5, for "image".
    g = {"image": np.full(2, 2.0, np.float32), "head": np.full(2, -1.0, np.float32)}
    full = {"image": np.full(2, 4.0, np.float32), "head": np.full(2, 4.0, np.float32)}
    text_only = {"head": np.full(2, 1.0, np.float32)}  # could not train the image encoder, did not send it
    out = weighted_average(g, [(full, 1.0), (text_only, 3.0)])
    np.testing.assert_allclose(out["image"], np.full(2, (4.0 * 1 + 2.0 * 3) / 4))  # 2.5
    np.testing.assert_allclose(out["head"], np.full(2, (4.0 * 1 + 1.0 * 3) / 4))


def test_masked_average_skips_non_senders_and_keeps_the_dtype():
    from fedmm.fl.strategy.fedavg import masked_weighted_average

    g = {"image": np.full(2, 2.0, np.float16), "head": np.full(2, -1.0, np.float16), "text": np.ones(2, np.float16)}
    full = {"image": np.full(2, 4.0, np.float16), "head": np.full(2, 4.0, np.float16)}
    text_only = {"head": np.full(2, 1.0, np.float16)}
    out = masked_weighted_average(g, [(full, 1.0), (text_only, 3.0)])
    np.testing.assert_array_equal(out["image"], np.full(2, 4.0))  # the sender's value, not pulled toward 2.0
    np.testing.assert_array_equal(out["head"], np.full(2, 1.75))
    np.testing.assert_array_equal(out["text"], np.ones(2))  # nobody sent it: the global value
    assert all(v.dtype == np.float16 for v in out.values())


def test_single_client_returns_its_params_and_zero_weight_fails():
    g = {"w": np.ones(3, np.float32)}
    c = {"w": np.arange(3, dtype=np.float32)}
    np.testing.assert_array_equal(weighted_average(g, [(c, 5)])["w"], c["w"])
    with pytest.raises(ValueError):
        weighted_average(g, [(c, 0)])


def test_fedavg_strategy_weights_by_num_examples():
    g = {"w": np.zeros(1, np.float32)}
    ups = [Update(0, {"w": np.array([1.0], np.float32)}, 1), Update(1, {"w": np.array([3.0], np.float32)}, 3)]
    out = FedAvg(FedAvgConfig()).aggregate(1, g, ups)
    np.testing.assert_allclose(out["w"], [2.5])


def test_masked_average_accumulates_in_float64_whatever_the_dtype():
    from fedmm.fl.strategy.fedavg import masked_weighted_average

    rng = np.random.default_rng(3)
    g = {"w": np.zeros(200, np.float16)}
    ups = [({"w": rng.normal(size=200).astype(np.float16)}, float(w)) for w in rng.uniform(0.1, 3.0, size=40)]
    expected = sum(w * u["w"].astype(np.float64) for u, w in ups) / sum(w for _, w in ups)
    np.testing.assert_array_equal(masked_weighted_average(g, ups)["w"], expected.astype(np.float16))
    np.testing.assert_array_equal(weighted_average(g, ups)["w"], expected.astype(np.float16))
    with pytest.raises(ValueError, match="aggregation weights of w must sum to a positive number"):
        masked_weighted_average(g, [({"w": g["w"]}, 0.0)])


@pytest.mark.run
def test_a_text_only_and_an_image_only_client_do_not_pull_the_encoder_they_lack_toward_zero(tmp_path):
    """End to end: three even clients, client 1 text-only, client 2 image-only, one FedAvg round. Each encoder is
    sent by two clients of three; the third counts with the global value, so the encoder's size stays about where it
    was (measured: 1.0003 for text and 1.03 for image, where training moves each weight a little). Counting the
    missing one as zero would scale it to about 2/3."""
    args = [*TINY, "num_clients=3", "partition=iid", "modality.text_only=[1]", "modality.image_only=[2]", "rounds=1"]
    fedmm.run([*args, f"output_dir={tmp_path}/run"])
    exp = initial_server(args, tmp_path)
    final = load_file(str(tmp_path / "run" / "global.safetensors"))
    for modality in ("text", "image"):
        keys = [k for k in final if exp.backend.key_modality(k) == modality]
        assert keys
        before = np.sqrt(sum(np.sum(exp.params[k].astype(np.float64) ** 2) for k in keys))
        after = np.sqrt(sum(np.sum(final[k].astype(np.float64) ** 2) for k in keys))
        assert 0.95 < after / before < 1.1, (modality, after / before)


def test_weights_that_sum_to_one_or_less_are_fine_and_zero_is_refused_word_for_word():
    g = {"w": np.zeros(1, np.float64)}
    assert weighted_average(g, [({"w": np.array([3.0])}, 1.0)])["w"].tolist() == [3.0]
    out = weighted_average(g, [({"w": np.array([1.0])}, 0.25), ({"w": np.array([3.0])}, 0.5)])
    assert out["w"][0] == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="^aggregation weights must sum to a positive number$"):
        weighted_average(g, [({"w": np.array([1.0])}, 0.0)])
