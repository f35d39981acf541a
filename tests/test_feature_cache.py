"""Cached frozen-encoder features in the fusion model: the same training as without the cache, and a cache that
notices new weights and goes away with its data set."""

import gc

import numpy as np
import torch
from safetensors.numpy import load_file

from conftest import TINY
from fedmm import cli
from fedmm.backends import BACKENDS
from fedmm.config import load_settings
from fedmm.experiment import load_data

FROZEN = [*TINY, "model.freeze_text=true", "model.freeze_image=true", "rounds=2", "num_clients=2", "progress=false"]


def test_cached_and_uncached_training_give_the_same_model(tmp_path, capsys):
    for cache in ("true", "false"):
        args = ["run", *FROZEN, f"model.cache_features={cache}", f"output_dir={tmp_path / cache}"]
        assert cli.main(args) == 0, capsys.readouterr().err
    a, b = (load_file(str(tmp_path / c / "global.safetensors")) for c in ("true", "false"))
    assert set(a) == set(b) and not any(k.startswith(("text_encoder.", "image_encoder.")) for k in a)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def backend_model_data(*extra):
    s = load_settings([*FROZEN, *extra])
    data = load_data(s)
    backend = BACKENDS.get(s.model.name).factory(s.model, data.train.num_labels, False)
    return backend, backend.build_model(seed=0), data.train.subset(np.arange(64))


def test_batches_carry_features_that_match_the_encoders_and_new_weights_renew_them():
    backend, model, data = backend_model_data()
    idx = np.arange(8)
    raw = backend.collate(data, idx)  # not prepared yet: tokens and pixels
    assert "input_ids" in raw and "pixel_values" in raw
    backend.prepare(model, data)
    batch = backend.collate(data, idx)
    assert set(batch) == {"text_features", "image_features", "labels"}
    model.eval()
    with torch.no_grad():
        image = model.encode_image(raw["pixel_values"])
        image = image[raw["image_index"]] if "image_index" in raw else image
        torch.testing.assert_close(batch["image_features"], image, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch["text_features"], model.encode_text(raw["input_ids"], raw["attention_mask"]))
        torch.testing.assert_close(backend.logits(model, batch), backend.logits(model, raw), rtol=1e-4, atol=1e-5)
        next(model.image_encoder.parameters()).mul_(2.0)  # new encoder weights...
    backend.prepare(model, data)
    assert not torch.allclose(backend.collate(data, idx)["image_features"], batch["image_features"])  # ...new ones
    del data
    gc.collect()
    assert not backend._features  # the cache entry went with its data set


def test_no_cache_while_an_encoder_trains():
    backend, model, data = backend_model_data("model.freeze_image=false")
    backend.prepare(model, data)
    assert "pixel_values" in backend.collate(data, np.arange(4)) and not backend._features
