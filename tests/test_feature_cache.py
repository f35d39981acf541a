"""Cached frozen-encoder features in the fusion model: the same training as without the cache, and a cache that
notices new weights and goes away with its data set."""

import gc
from pathlib import Path

import numpy as np
import pytest
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


# -- the disk cache ------------------------------------------------------------------------------------------------


def entries(cache):
    return {p.name: p.stat().st_mtime_ns for p in (cache / "features").glob("*.safetensors")}


def test_disk_cache_hits_on_a_repeat_and_misses_on_new_weights_preprocessing_or_data(tmp_path, capsys, monkeypatch):
    from fedmm.backends.fusion import FusionClassifier

    cache = tmp_path / "cache"

    def run(name, *extra):
        args = ["run", *FROZEN, f"model.cache_dir={cache}", f"output_dir={tmp_path / name}", *extra]
        assert cli.main(args) == 0, capsys.readouterr().err
        return entries(cache)

    first = run("a")
    assert first
    original_encode = FusionClassifier.encode_image

    def no_encoding(*a, **k):
        raise AssertionError("encoded although the features are cached")

    monkeypatch.setattr(FusionClassifier, "encode_image", no_encoding)
    monkeypatch.setattr(FusionClassifier, "_pool", no_encoding)
    assert run("b") == first  # a hit: nothing encoded, nothing rewritten, and the same model
    a, b = (load_file(str(tmp_path / r / "global.safetensors")) for r in ("a", "b"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    monkeypatch.setattr(FusionClassifier, "encode_image", original_encode)
    # New preprocessing: the image tables are encoded again (new entries); no entry is rewritten.
    resized = run("c", "model.image_size=24")
    assert set(first) < set(resized) and all(resized[k] == t for k, t in first.items())
    monkeypatch.undo()
    # New data, new weights: new entries each time.
    more = run("d", "task.num_train=640")
    assert set(resized) < set(more)
    assert set(more) < set(run("e", "seed=7"))  # seed 7 initialises other (frozen, random) encoder weights


@pytest.mark.parametrize("changed", ["text_encoder", "image_encoder"])
def test_new_weights_in_one_encoder_renew_its_entry_only(tmp_path, changed):
    """Each entry's key holds its own encoder's digest: new weights in one encoder add exactly one entry on disk,
    and the batches carry that encoder's new features (as encoded without a cache) and the other's old ones."""
    backend, model, data = backend_model_data(f"model.cache_dir={tmp_path}")
    idx = np.arange(8)
    backend.prepare(model, data)
    before, first = backend.collate(data, idx), entries(tmp_path)
    assert len(first) == 2  # the texts' and the image table's
    torch.manual_seed(0)
    with torch.no_grad():
        for p in getattr(model, changed).parameters():
            p.add_(0.1 * torch.randn_like(p))
    backend.prepare(model, data)
    after = backend.collate(data, idx)
    assert len(entries(tmp_path)) == 3 and set(first) < set(entries(tmp_path))
    new, old = ("text", "image") if changed == "text_encoder" else ("image", "text")
    assert torch.equal(after[f"{old}_features"], before[f"{old}_features"])
    assert not torch.allclose(after[f"{new}_features"], before[f"{new}_features"])
    uncached, _, _ = backend_model_data("model.cache_dir=none")
    uncached.prepare(model, data)
    torch.testing.assert_close(uncached.collate(data, idx)[f"{new}_features"], after[f"{new}_features"])


def test_a_damaged_entry_is_encoded_again(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["run", *FROZEN, f"model.cache_dir={cache}"]
    assert cli.main([*args, f"output_dir={tmp_path / 'a'}"]) == 0
    victim = sorted((cache / "features").glob("*.safetensors"))[0]
    victim.write_bytes(b"\0" * 100)
    assert cli.main([*args, f"output_dir={tmp_path / 'b'}"]) == 0, capsys.readouterr().err
    a, b = (load_file(str(tmp_path / r / "global.safetensors")) for r in ("a", "b"))
    assert all(np.array_equal(a[k], b[k]) for k in a) and victim.stat().st_size > 100


def _writer(root, key, log):
    import time

    from fedmm.backends.feature_cache import FeatureCache

    def compute():
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(0.5)  # long enough for the other writer to arrive meanwhile
        return torch.arange(6, dtype=torch.float32).view(2, 3)

    return FeatureCache(root).get_or_compute(key, compute).tolist()


def test_concurrent_writers_encode_an_entry_once(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    log = tmp_path / "log"
    with ctx.Pool(2) as pool:
        out = pool.starmap(_writer, [(tmp_path, "k" * 64, log)] * 2)
    assert out[0] == out[1] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert log.read_text() == "computed\n"


def test_cache_clear_from_the_command_line(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert cli.main(["run", *FROZEN, f"model.cache_dir={cache}", f"output_dir={tmp_path / 'a'}"]) == 0
    n = len(entries(cache))
    capsys.readouterr()
    assert cli.main(["cache", "info", "--cache-dir", str(cache)]) == 0
    assert f"holds {n} cached feature file(s)" in capsys.readouterr().out
    assert cli.main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert f"removed {n} cached feature file(s)" in capsys.readouterr().out and not (cache / "features").exists()


def test_an_empty_cache_and_the_default_folder(tmp_path, monkeypatch):
    from fedmm.backends.feature_cache import cache_root, clear, usage

    monkeypatch.setenv("FEDMM_CACHE", str(tmp_path / "home"))
    assert cache_root() == cache_root("") == tmp_path / "home"  # model.cache_dir unset: fedmm's cache home
    assert cache_root("~/c") == Path.home() / "c"
    assert usage(tmp_path / "never") == (0, 0) == clear(tmp_path / "never")  # no folder yet: nothing, no error


def test_fingerprints_see_every_pixel_and_every_text():
    from fedmm.backends.feature_cache import array_fingerprint, texts_fingerprint

    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 3, 3, 2] = 1
    assert array_fingerprint(a) == array_fingerprint(a.copy()) != array_fingerprint(b)
    assert array_fingerprint(a) != array_fingerprint(a.reshape(4, 2, 4, 3))  # same bytes, another shape
    assert texts_fingerprint(["ab", "c"]) == texts_fingerprint(["ab", "c"]) != texts_fingerprint(["a", "bc"])


def test_a_cache_folder_that_cannot_be_made_is_one_line_naming_the_fix(tmp_path):
    from fedmm.backends.feature_cache import FeatureCache
    from fedmm.errors import FedmmError

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FedmmError) as e:
        FeatureCache(tmp_path / "file").get_or_compute("k", lambda: torch.zeros(1))
    assert str(e.value) == (
        f"cannot use the feature cache {tmp_path / 'file' / 'features'} (Not a directory); set model.cache_dir to "
        "a writable folder or model.cache_dir=none"
    )
