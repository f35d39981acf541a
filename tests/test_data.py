import numpy as np
import pytest

from fedmm.backends.fusion import FusionBackend
from fedmm.config import load_settings
from fedmm.data.dataset import subsample
from fedmm.data.tasks import load_task
from fedmm.schedule import scheduled_lr
from fedmm.train.loop import train_epochs


def test_synthetic_is_deterministic_and_real_arrays_and_strings():
    s = load_settings(["task=synthetic", "task.num_train=50"])
    a, b = load_task(s.task, 1), load_task(s.task, 1)
    assert np.array_equal(a.train.images, b.train.images) and a.train.texts == b.train.texts
    assert a.train.images.dtype == np.uint8 and a.train.images.shape[1:] == (32, 32, 3)
    assert all(isinstance(t, str) and len(t.split()) >= 4 for t in a.train.texts)
    ml = load_task(load_settings(["task=synthetic_multilabel"]).task, 0)
    assert ml.train.multilabel and ml.metrics == ("micro_f1", "macro_f1")
    assert ml.train.partition_labels().max() <= ml.train.num_labels


def test_losing_a_modality_measurably_hurts():
    s = load_settings(["task=synthetic", "model=fusion_tiny", "task.num_train=1500", "task.num_test=400"])
    data = load_task(s.task, 0)
    backend = FusionBackend(s.model, data.train.num_labels, False)
    model = backend.build_model(seed=0)
    train_epochs(model, backend, data.train, epochs=6, batch_size=32, lr=3e-3, weight_decay=0.0, seed=0, progress=False)
    both = backend.evaluate(model, data.test, ("accuracy",))["accuracy"]
    text_only = backend.evaluate(model, data.test.with_modalities({"text"}), ("accuracy",))["accuracy"]
    image_only = backend.evaluate(model, data.test.with_modalities({"image"}), ("accuracy",))["accuracy"]
    assert both > 0.8
    assert text_only < both - 0.3 and image_only < both - 0.3


def test_easyvqa_splits_hold_out_test_and_validation_images():
    pytest.importorskip("easy_vqa")
    s = load_settings(["task=easyvqa"])
    data = load_task(s.task, 0)
    assert len(data.test) == 9673 and data.train.num_labels == 13
    assert len(data.train) + len(data.val) == 38575
    # validation images never appear in training
    assert not set(data.val.image_ids.tolist()) & set(data.train.image_ids.tolist())
    counts = np.bincount(data.test.labels, minlength=13)
    assert counts.max() / counts.sum() < 0.4  # the majority answer ("yes") is about 0.37
    small = subsample(data.train, 100, seed=0)
    assert len(small) == 100 and small.images is data.train.images


def test_cosine_schedule_decays_to_a_tenth():
    assert scheduled_lr(1.0, 1, 10, "cosine") == pytest.approx(1.0)
    assert scheduled_lr(1.0, 10, 10, "cosine") == pytest.approx(0.1)
    assert scheduled_lr(1.0, 5, 10, "constant") == 1.0
