import numpy as np
import pytest

from fedmm.backends.fusion import FusionBackend
from fedmm.config import load_settings
from fedmm.data.modality import assign_modalities, client_modalities, parse_client_modalities
from fedmm.errors import FedmmError
from fedmm.experiment import split_clients
from fedmm.data.tasks import load_task


def test_parse_spec_forms():
    assert parse_client_modalities("1:text,2:image,3:image+text") == {
        1: frozenset({"text"}),
        2: frozenset({"image"}),
        3: frozenset({"image", "text"}),
    }
    assert client_modalities([2], [3]) == {2: frozenset({"text"}), 3: frozenset({"image"})}
    with pytest.raises(FedmmError, match="modalities"):
        parse_client_modalities("1:audio")
    with pytest.raises(FedmmError, match="both"):
        client_modalities([1], [1])


def test_missing_rate_drops_one_modality_from_that_share_of_clients():
    mods = assign_modalities(10, {0: frozenset({"text"})}, missing_rate=0.5, drop="image", seed=1)
    assert mods[0] == {"text"}
    assert sum(m == {"text"} for m in mods[1:]) == 4 and sum(len(m) == 2 for m in mods) == 5
    assert assign_modalities(10, {}, 0.5, "random", 7) == assign_modalities(10, {}, 0.5, "random", 7)
    with pytest.raises(FedmmError, match="clients are 0..3"):
        assign_modalities(4, {4: frozenset({"text"})}, 0.0, "random", 0)


def test_text_only_client_batches_contain_no_image_data():
    s = load_settings(
        [
            "task=synthetic",
            "model=fusion_tiny",
            "num_clients=4",
            "modality.text_only=[1]",
            "modality.image_only=[2]",
            "task.num_train=200",
        ]
    )
    data = load_task(s.task, s.seed)
    clients = split_clients(s, data)
    assert clients[1].images is None and clients[1].image_ids is None  # the client never holds images
    assert clients[2].texts is None
    backend = FusionBackend(s.model, data.train.num_labels, data.train.multilabel)
    model = backend.build_model(seed=0)
    batch = backend.collate(clients[1], np.arange(8))
    assert "pixel_values" not in batch and "input_ids" in batch
    batch = backend.collate(clients[2], np.arange(8))
    assert "input_ids" not in batch and "pixel_values" in batch
    # The client trains and sends only its modality's keys and the shared ones.
    keys = backend.client_keys(model, clients[1].modalities)
    assert keys and not any(k.startswith(("image_encoder.", "image_proj.")) for k in keys)
    assert any(k.startswith("classifier.") for k in keys)
