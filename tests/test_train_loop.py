"""Training options: gradient accumulation, the learning-rate schedule with warm-up, device and precision checks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmm.backends.base import Backend
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import FedmmError
from fedmm.modelops import resolve_device
from fedmm.schedule import scheduled_lr
from fedmm.train.loop import train_epochs


class TextLengthBackend(Backend):
    """A linear classifier over two features of the question (its length and its word count)."""

    def build_model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, self.num_labels))

    def logits(self, model, batch):
        return model(batch["features"])

    def collate(self, data, idx):
        f = [[len(data.texts[i]) / 20, len(data.texts[i].split()) / 5] for i in idx]
        return {"features": torch.tensor(f, dtype=torch.float32), "labels": torch.from_numpy(data.labels[idx])}


def _data(n=64):
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(k)) for k in rng.integers(1, 9, n)]
    return MultimodalDataset(
        labels=(np.array([len(t.split()) for t in texts]) > 4).astype(np.int64),
        label_names=("short", "long"),
        texts=texts,
    )


def test_gradient_accumulation_equals_the_larger_batch():
    backend, data = TextLengthBackend(None, 2, False), _data()
    runs = {}
    for batch_size, accum in ((32, 1), (16, 2), (8, 4)):
        model = backend.build_model(seed=3)
        stats = train_epochs(
            model,
            backend,
            data,
            epochs=2,
            batch_size=batch_size,
            lr=0.05,
            weight_decay=0.0,
            seed=7,
            progress=False,
            grad_accum_steps=accum,
        )
        assert stats["steps"] == 4  # 64 examples / 32 per optimizer step, 2 epochs
        runs[accum] = [p.detach().clone() for p in model.parameters()]
    for accum in (2, 4):
        for a, b in zip(runs[1], runs[accum]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_epochs_last_short_group_still_steps_with_its_own_mean():
    backend, data = TextLengthBackend(None, 2, False), _data(40)  # 40 = 16 + 16 + 8 at batch 8 x accum 2
    model = backend.build_model(seed=3)
    stats = train_epochs(
        model,
        backend,
        data,
        epochs=1,
        batch_size=8,
        lr=0.05,
        weight_decay=0.0,
        seed=7,
        progress=False,
        grad_accum_steps=2,
    )
    assert stats["steps"] == 3


def test_learning_rate_warm_up_then_schedule():
    assert [scheduled_lr(1.0, r, 5, "constant", warmup=2) for r in range(1, 6)] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    cos = [scheduled_lr(1.0, r, 6, "cosine", warmup=2) for r in range(1, 7)]
    assert cos[:2] == [1 / 3, 2 / 3] and cos[2] == 1.0 and math.isclose(cos[-1], 0.1)  # decays over rounds 3..6
    assert scheduled_lr(1.0, 1, 4, "cosine") == 1.0  # no warm-up: the schedule starts at lr
    from fedmm.config import load_settings

    with pytest.raises(FedmmError, match="lr_schedule must be one of constant, cosine"):  # checked once, at load
        load_settings(["task=synthetic", "model=fusion_tiny", "lr_schedule=linear"])


def test_device_names():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FedmmError, match="device must be"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(FedmmError, match="sees no GPU"):
            resolve_device("cuda")
