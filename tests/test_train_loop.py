"""Training options: gradient accumulation, the learning-rate schedule with warm-up, device and precision checks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmm.backends.base import Backend
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import FedmmError
from fedmm.modelops import batch_indices, resolve_device
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


def sgd_by_hand(model, backend, data, *, epochs, batch_size, accum, lr, seed, momentum=0.9):
    """The training loop written out: the same batch order, each optimizer step the mean loss of its own group of
    batches (an epoch's last group may be shorter), torch's SGD with momentum by hand, gradients cleared per step."""
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    velocity = [torch.zeros_like(p) for p in params]
    for _ in range(epochs):
        batches = list(batch_indices(len(data), batch_size, rng))
        for g in range(0, len(batches), accum):
            group = batches[g : g + accum]
            loss = sum(backend.loss(model, backend.collate(data, idx))[0] for idx in group) / len(group)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, v, d in zip(params, velocity, grads):
                    v.mul_(momentum).add_(d)  # torch's buffer; its first step's is d, as here from zeros
                    p.sub_(lr * v)


@pytest.mark.parametrize("n, accum", [(70, 4), (40, 2), (64, 1)])
def test_the_loop_is_sgd_on_each_groups_mean_and_clears_its_gradients(n, accum):
    """With SGD (no adaptive step to hide a common scale) the loop's parameters equal the hand-written loop's: so a
    loop that never clears gradients, or divides an epoch's short last group (70 at batch 8 x 4: 4, 4 and 1
    batches) by `accum` instead of its own size, fails. No gradient is left on the model afterwards."""
    backend, data = TextLengthBackend(None, 2, False), _data(n)
    ours, ref = backend.build_model(seed=3), backend.build_model(seed=3)
    kw = dict(epochs=2, batch_size=8, lr=0.05, seed=7)
    stats = train_epochs(
        ours, backend, data, **kw, weight_decay=0.0, progress=False, optimizer_name="sgd", grad_accum_steps=accum
    )
    sgd_by_hand(ref, backend, data, **kw, accum=accum)
    assert stats["steps"] == 2 * math.ceil(len(list(batch_indices(n, 8))) / accum)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in ours.parameters())


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


def test_pos_weight_of_any_float_dtype_trains_in_the_models_float32():
    """A multilabel client's `pos_weight` is a numpy array; given as float64 (numpy's default) it must train exactly
    as its float32 copy, bit for bit: a loop that kept its dtype would compute the loss in float64 and round the
    gradients differently."""
    data = _data()
    data = MultimodalDataset(
        labels=np.stack([data.labels, 1 - data.labels], axis=1).astype(np.float32),
        label_names=("long", "short"),
        texts=data.texts,
    )
    backend, runs = TextLengthBackend(None, 2, True), []
    for dtype in (np.float32, np.float64):
        model = backend.build_model(seed=3)
        kw = dict(epochs=2, batch_size=8, lr=0.05, weight_decay=0.0, seed=7, progress=False)
        stats = train_epochs(model, backend, data, **kw, pos_weight=np.array([3.1, 0.37], dtype=dtype))
        runs.append((stats["train_loss"], [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_the_reported_loss_is_the_example_mean_and_weight_decay_reaches_adamw():
    """With lr 0 the model does not move, so train_loss is the loss of the data under it: the mean over examples
    (the last batch is short), not over batches or of a sum. AdamW decays the weights by its weight_decay."""
    backend, data = TextLengthBackend(None, 2, False), _data(70)
    model = backend.build_model(seed=3)
    stats = train_epochs(
        model, backend, data, epochs=2, batch_size=32, lr=0.0, weight_decay=0.0, seed=1, progress=False,
        optimizer_name="sgd",
    )  # fmt: skip
    assert stats["train_loss"] == pytest.approx(backend.evaluate(model, data, ("accuracy",))["loss"], rel=1e-6)
    runs = []
    for wd in (0.0, 0.5):
        model = backend.build_model(seed=3)
        train_epochs(model, backend, data, epochs=1, batch_size=32, lr=0.05, weight_decay=wd, seed=1, progress=False)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert runs[1].norm() < runs[0].norm() - 1e-3


def test_the_progress_bar_names_the_client_in_batches_on_a_terminal_and_is_silent_without_progress(monkeypatch):
    """progress=true on a terminal shows the client's bar counted in batches; progress=false shows nothing, even on
    a terminal (and off a terminal tqdm stays silent by itself)."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    backend, data = TextLengthBackend(None, 2, False), _data(16)
    for progress in (True, False):
        screen = Terminal()
        monkeypatch.setattr(sys, "stderr", screen)
        model = backend.build_model(seed=0)
        train_epochs(
            model, backend, data, epochs=1, batch_size=8, lr=0.01, weight_decay=0.0, seed=0, progress=progress,
            desc="client 3",
        )  # fmt: skip
        shown = screen.getvalue()
        assert ("client 3" in shown and "batch" in shown and "it/s" not in shown) if progress else shown == "", shown
