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
    with pytest.raises(FedmmError, match=r"client 1: modalities must be a non-empty subset of \['image', 'text'\]"):
        parse_client_modalities("1:audio")
    with pytest.raises(FedmmError, match=r"client 1: modalities must be .* \(got \['text:image'\]\)"):
        parse_client_modalities("1:text:image")  # the first colon splits
    with pytest.raises(FedmmError, match="bad modality spec '2'; write CLIENT:MODALITIES, e.g. '1:text,2:image'"):
        parse_client_modalities("1:text,2")
    with pytest.raises(FedmmError, match="'x' is not a client index"):
        parse_client_modalities("x:text")
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
    clients, _ = split_clients(s, data)
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


def test_sample_missing_is_deterministic_never_both_and_at_the_asked_rates():
    from fedmm.data.modality import sample_missing

    image, text = sample_missing(20_000, 0.3, 0.2, seed=5, client=1)
    assert not (~image & ~text).any()  # never both
    assert abs((~image).mean() - 0.3) < 0.015 and abs((~text).mean() - 0.2) < 0.015
    again = sample_missing(20_000, 0.3, 0.2, seed=5, client=1)
    assert np.array_equal(image, again[0]) and np.array_equal(text, again[1])
    other = sample_missing(20_000, 0.3, 0.2, seed=5, client=2)[0]
    assert not np.array_equal(image, other)  # each client draws its own
    assert sample_missing(50, 0.0, 0.4, 1, 0)[0] is None  # nothing missing: no mask
    with pytest.raises(FedmmError, match="is over 1"):
        sample_missing(5, 0.6, 0.5, 0, 0)


def test_label_noise_single_label_and_multilabel():
    from fedmm.data.noise import noisy_labels

    labels = np.arange(10_000) % 5
    new, changed = noisy_labels(labels, 5, 0.3, seed=2, client=0)
    assert np.array_equal(changed, new != labels)
    assert abs(changed.mean() - 0.3 * 4 / 5) < 0.02  # a fifth of the redraws land on the true class
    assert np.array_equal(new, noisy_labels(labels, 5, 0.3, seed=2, client=0)[0])
    multi = (np.random.default_rng(0).random((5_000, 4)) < 0.3).astype(np.float32)
    new, changed = noisy_labels(multi, 4, 0.1, seed=2, client=3)
    assert new.dtype == np.float32 and set(np.unique(new)) <= {0.0, 1.0}
    assert abs((new != multi).mean() - 0.1) < 0.01  # each bit flipped with probability 0.1
    assert np.array_equal(changed, (new != multi).any(axis=1))


@pytest.mark.run
def test_per_sample_settings_reach_the_clients_the_record_and_the_model(tmp_path):
    import json

    import torch

    import fedmm

    args = ["task=synthetic", "model=fusion_tiny", "num_clients=3", "task.num_train=300"]
    s = load_settings(
        [
            *args,
            "modality.sample_missing_image=0.3",
            "modality.sample_missing_text=0.2",
            "noise.label_rate=0.5",
            "noise.clients=[1]",
            "modality.text_only=[2]",
        ]
    )
    data = load_task(s.task, s.seed)
    clients, _ = split_clients(s, data)
    plain, _ = split_clients(load_settings([*args, "modality.text_only=[2]"]), data)
    assert clients[0].image_present is not None and clients[2].image_present is None  # text-only: nothing to drop
    assert clients[1].noisy_labels.sum() == (clients[1].labels != plain[1].labels).sum() > 0
    assert clients[0].noisy_labels is None and np.array_equal(clients[0].labels, plain[0].labels)
    # A sample without its image is scored as the model scores it with no image at all.
    backend = FusionBackend(s.model, data.train.num_labels, data.train.multilabel)
    model = backend.build_model(seed=0).eval()
    rows = np.flatnonzero(~clients[0].image_present)[:4]
    with torch.no_grad():
        masked = backend.logits(model, backend.collate(clients[0], rows))
        text_only = backend.logits(model, backend.collate(clients[0].with_modalities({"text"}), rows))
    torch.testing.assert_close(masked, text_only)
    # The run records the counts per client.
    fedmm.run(
        args,
        rounds=1,
        output_dir=str(tmp_path / "r"),
        modality={"sample_missing_image": 0.3},
        noise={"label_rate": 0.5, "clients": [1]},
    )
    record = json.loads((tmp_path / "r" / "partition.json").read_text())
    assert [c.get("noisy_labels", 0) > 0 for c in record] == [False, True, False]
    assert all(c["missing_image"] > 0 and "missing_text" not in c for c in record)


def test_vlm_backends_refuse_samples_without_an_image():
    import fedmm

    with pytest.raises(FedmmError, match="model=blip_vqa needs every sample's image and text"):
        fedmm.run(
            ["experiment=blip_tiny_easyvqa", "modality.sample_missing_image=0.2", "rounds=1", "max_train_samples=50"]
        )


def test_label_noise_draws_are_pinned():
    """A resumed run and every runtime must flip exactly these (a changed stream constant shows here)."""
    from fedmm.data.noise import noisy_labels

    new, changed = noisy_labels(np.array([0, 1, 2, 0, 1, 2, 0, 1]), 3, 0.5, seed=4, client=1)
    assert (
        new.dtype == np.int64
        and new.tolist() == [0, 1, 2, 2, 0, 2, 0, 1]
        and changed.tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    )
    new, changed = noisy_labels(np.array([[0, 1], [1, 0], [0, 0]], np.float32), 2, 0.5, seed=4, client=1)
    assert new.tolist() == [[0, 1], [0, 1], [1, 1]] and changed.tolist() == [0, 1, 1]


def test_modality_settings_refuse_bad_rates_and_drops_and_an_empty_spec_names_nobody():
    assert parse_client_modalities("") == {}
    with pytest.raises(FedmmError, match=r"^modality.missing_rate must be in \[0, 1\] \(got 1.5\)$"):
        assign_modalities(3, {}, 1.5, "image", 0)
    with pytest.raises(FedmmError, match=r"^modality.drop must be image, text or random \(got 'audio'\)$"):
        assign_modalities(3, {}, 0.5, "audio", 0)


def test_missing_samples_are_pinned_and_shares_may_sum_to_exactly_one():
    from fedmm.data.modality import sample_missing

    image, text = sample_missing(8, 0.25, 0.25, seed=0, client=0)
    assert image.astype(int).tolist() == [0, 1, 1, 0, 1, 0, 1, 0]
    assert text.astype(int).tolist() == [1, 0, 1, 1, 0, 1, 1, 1]
    image, text = sample_missing(6, 0.0, 0.5, seed=0, client=0)
    assert image is None and text.tolist() == [False, False, True, False, False, False]  # None: nothing missing
    assert sample_missing(6, 0.5, 0.0, seed=0, client=0)[1] is None
    image, text = sample_missing(6, 0.5, 0.5, seed=3, client=0)  # every sample lacks exactly one modality
    assert (image ^ text).all()
    with pytest.raises(FedmmError, match=r"= 1\.2 is over 1"):
        sample_missing(6, 0.7, 0.5, seed=3, client=0)


def test_missing_rate_draws_are_pinned_distinct_and_may_be_everyone():
    mods = [sorted(m) for m in assign_modalities(10, {}, 0.9, "random", 3)]
    both, text, image = ["image", "text"], ["text"], ["image"]
    assert mods == [both, text, image, image, image, text, text, text, image, image]  # 9 distinct clients, both kinds
    assert [sorted(m) for m in assign_modalities(4, {}, 1.0, "text", 3)] == [image] * 4


def test_missing_labels_leave_the_chosen_clients_samples_out_per_client_and_seed():
    """noise.missing_label_rate: about that share of each chosen client's training samples lose their label and so
    leave its data (no backend learns from unlabelled ones), a different draw per client and the same one again;
    partition.json counts them; the other clients keep all theirs."""
    from fedmm.data.noise import labelled
    from fedmm.data.summary import partition_summary

    keep = labelled(20_000, 0.3, seed=2, client=1)
    assert abs((~keep).mean() - 0.3) < 0.01 and np.array_equal(keep, labelled(20_000, 0.3, seed=2, client=1))
    assert not np.array_equal(keep, labelled(20_000, 0.3, seed=2, client=2))
    assert labelled(5, 1.0, seed=0, client=0).sum() == 1  # one sample keeps its label: no client is left empty
    args = ["task=synthetic", "model=fusion_tiny", "num_clients=3", "task.num_train=600", "partition=iid"]
    full, _ = split_clients(s := load_settings(args), load_task(s.task, s.seed))
    s = load_settings([*args, "noise.missing_label_rate=0.25", "noise.clients=[0,2]"])
    clients, _ = split_clients(s, load_task(s.task, s.seed))
    summary = partition_summary(clients)
    for k in (0, 2):
        assert summary[k]["missing_labels"] == len(full[k]) - len(clients[k]) > 0.15 * len(full[k])
        assert set(clients[k].texts) < set(full[k].texts)
    assert "missing_labels" not in summary[1] and clients[1].texts == full[1].texts
