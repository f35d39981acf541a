"""VQA v2 from the official files and from a Parquet export: splits, reference answers, the declared partition
label, bad samples, and two federated rounds of tiny BLIP on it."""

import json

import numpy as np
import pytest

import mmimdb_data as D
from conftest import untrained
from fedmm import cli
from fedmm.config import load_settings
from fedmm.data.partition import dirichlet_partition
from fedmm.data.tasks import load_task
from fedmm.errors import FedmmError

BLIP = ["model=blip_vqa_tiny", "modality.text_only=[]", "modality.image_only=[]", "batch_size=8", "progress=false"]


def _load(root, *extra):
    return load_task(load_settings(["task=vqav2", f"task.root={root}", *extra]).task, seed=0)


def test_official_files_give_splits_by_image_references_and_answer_types(tmp_path):
    data = _load(D.write_vqav2(tmp_path / "vqa"), "task.val_fraction=0.25")
    assert len(data.train) == 48 and len(data.val) + len(data.test) == 48 and data.metrics == ("vqa_accuracy",)
    val_images = {data.val.images.paths[i] for i in data.val.image_ids}
    test_images = {data.test.images.paths[i] for i in data.test.image_ids}
    assert len(val_images) == 3 and not val_images & test_images  # held out by image
    assert len(data.train.references(0)) == 10 and data.train.references(0)[-2] == "maybe"
    assert data.train.label_names[data.train.labels[0]] == data.train.references(0)[0]  # the target
    # answer types: what color (other), is it red (yes/no), how many (number), is there a dog (yes/no)
    assert np.bincount(data.train.partition_labels()).tolist() == [24, 12, 12]
    assert data.train.images[0].shape == (384, 384, 3)  # read from disk on demand, at task.image_size


def test_top_answers_partition_label_has_a_rest_class(tmp_path):
    data = _load(D.write_vqav2(tmp_path / "vqa"), "task.partition_by=top_answers", "task.top_answers=2")
    groups = data.train.partition_labels()
    names = [data.train.label_names[k] for k in data.train.labels]
    assert set(groups.tolist()) == {0, 1, 2}
    assert {n for n, g in zip(names, groups) if g == 0} == {"no"}  # 24 "no"s: the most common answer
    assert {n for n, g in zip(names, groups) if g == 2} == {"red", "green", "blue", "yes"}  # the rest
    parts = dirichlet_partition(groups, 3, alpha=0.3, seed=0, min_size=5)
    assert sorted(np.concatenate(parts).tolist()) == list(range(48)) and min(map(len, parts)) >= 5
    with pytest.raises(FedmmError, match="partition_by must be"):
        _load(tmp_path / "vqa", "task.partition_by=question_type")
    # answer: every distinct answer its own class, numbered in sorted order (NVFlare FedUMM's shard_dataset)
    by_answer = _load(tmp_path / "vqa", "task.partition_by=answer").train.partition_labels()
    order = sorted(set(names))
    assert by_answer.tolist() == [order.index(n) for n in names] and len(order) == 6
    with pytest.raises(FedmmError, match="task.vqa_metric must be one of official, normalized, fedumm"):
        _load(tmp_path / "vqa", "task.vqa_metric=strict")


def test_missing_image_is_a_bad_sample(tmp_path, capsys):
    root = D.write_vqav2(tmp_path / "vqa")
    (root / "train2014" / "COCO_train2014_000000000003.jpg").unlink()
    with pytest.raises(FedmmError, match="COCO_train2014_000000000003.jpg.*task.on_bad_sample=skip"):
        _load(root)
    data = _load(root, "task.on_bad_sample=skip")
    assert len(data.train) == 44 and "skipped 4 bad sample(s)" in capsys.readouterr().err


def _write_parquet(vqa, out):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir()
    for split, name in (("train2014", "train"), ("val2014", "validation")):
        qs = json.loads((vqa / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]
        ann = {
            a["question_id"]: a
            for a in json.loads((vqa / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]
        }
        rows = [
            {
                "question_id": q["question_id"],
                "question": q["question"],
                "image": {"bytes": (vqa / split / f"COCO_{split}_{q['image_id']:012d}.jpg").read_bytes(), "path": None},
                "answers": [
                    {"answer": a["answer"], "answer_id": a["answer_id"]} for a in ann[q["question_id"]]["answers"]
                ],
                "multiple_choice_answer": ann[q["question_id"]]["multiple_choice_answer"],
                "answer_type": ann[q["question_id"]]["answer_type"],
            }
            for q in qs
        ]
        pq.write_table(pa.Table.from_pylist(rows), out / f"{name}-00000-of-00001.parquet")
    return out


def _write_arrow(parquet_dir, out):
    """What `DatasetDict.save_to_disk` writes: <split>/data-00000-of-00001.arrow in Arrow's stream format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in ("train", "validation"):
        table = pq.read_table(next(parquet_dir.glob(f"{split}-*.parquet")))
        (out / split).mkdir(parents=True)
        with pa.OSFile(str(out / split / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
    return out


def test_parquet_and_save_to_disk_exports_read_like_the_official_files(tmp_path):
    vqa = D.write_vqav2(tmp_path / "vqa")
    official = _load(vqa)
    parquet = _write_parquet(vqa, tmp_path / "pq")
    for exported in (_load(parquet), _load(_write_arrow(parquet, tmp_path / "arrow"))):
        assert len(exported.train) == len(official.train) == 48
        assert [exported.train.references(i) for i in range(48)] == [official.train.references(i) for i in range(48)]
        assert np.array_equal(exported.train.partition_labels(), official.train.partition_labels())
        np.testing.assert_array_equal(exported.train.images[0], official.train.images[0])  # the same JPEG bytes


def test_tiny_blip_two_federated_rounds_on_vqav2_learn_under_the_fedumm_protocol(tmp_path, capsys):
    """Two rounds with experiment=fedumm_paper's protocol: FedAvg weighted by the batches each client trained, and
    the evaluation split dealt round-robin to the sites as their test data; scored with the official VQA accuracy.
    (Its per-answer Dirichlet split is pinned in test_top_answers_partition_label_has_a_rest_class: on these 48
    questions it gives a split from which 2 rounds at this lr do not reach the common answers.)"""
    root = D.write_vqav2(tmp_path / "vqa")
    args = [
        "task=vqav2",
        f"task.root={root}",
        *BLIP,
        "rounds=2",
        "num_clients=3",
        "partition=dirichlet",
        "partition.alpha=0.5",
        "partition.min_size=4",
        "task.client_test=eval_shards",
        "strategy.weight_by=steps",
        "lr=0.1",
    ]
    code = cli.main(["run", *args, f"output_dir={tmp_path / 'run'}"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    # From no right answer to the commonest ones (measured: vqa_accuracy 0 -> 0.41, eval loss 5.22 -> 4.94).
    base = untrained(args, tmp_path)
    assert records[-1]["eval_vqa_accuracy"] >= base["vqa_accuracy"] + 0.2
    assert records[-1]["eval_loss"] < base["loss"] - 0.15
    parts = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert min(p["num_examples"] for p in parts) >= 4 and sum(p["num_examples"] for p in parts) == 48
    assert [p["test_examples"] for p in parts] == [16, 16, 16]  # the 48 evaluation questions, round-robin
    assert records[-1]["client_eval"].keys() == {"0", "1", "2"}  # every site scored its shard
    assert all(not r.get("rejected") and len(r["clients"]) == 3 for r in records)  # weight_by=steps: none refused


def test_the_papers_grid_is_a_ready_sweep(tmp_path, capsys):
    from fedmm.config.load import expand_sweeps

    combos = expand_sweeps(["experiment=fedumm_grid", "task.root=/data/vqav2"])
    grid = set()
    for combo in combos:
        s = load_settings(combo)
        grid.add((s.num_clients, s.partition.alpha))
        assert (
            s.task.name,
            s.model.name,
            s.model.lora_r,
            s.model.lora_alpha,
            s.lr,
            s.batch_size,
            s.local_epochs,
            s.weight_decay,
        ) == ("vqav2", "blip_vqa", 16, 32.0, 2e-5, 32, 5, 0.05)
    assert grid == {(k, a) for k in (2, 4, 8, 16) for a in (0.1, 0.5, 1.0)}
    assert cli.main(["run", "experiment=fedumm_grid", "task.root=/data/vqav2"]) == 2
    assert "is a sweep over num_clients, partition.alpha: add -m" in capsys.readouterr().err
    # fixing K leaves the alpha axis: three tiny jobs, end to end
    root = D.write_vqav2(tmp_path / "vqa")
    code = cli.main(
        [
            "run",
            "-m",
            "experiment=fedumm_grid",
            f"task.root={root}",
            *BLIP,
            "num_clients=2",
            "rounds=1",
            "local_epochs=1",
            "partition.min_size=4",
            f"output_dir={tmp_path / 'grid'}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "grid").iterdir() if p.is_dir()) == [
        "partition.alpha-0.1",
        "partition.alpha-0.5",
        "partition.alpha-1.0",
    ]
    assert (tmp_path / "grid" / "summary.csv").read_text().count("\n") == 4  # a header and three jobs


def test_the_papers_own_settings_are_a_ready_sweep(capsys):
    """experiment=fedumm_paper: the same 12 cells at the paper's settings (100 rounds, constant lr, accumulation 8)
    as the FedUMM code trains them (AdamW's default weight decay 0.01, test_vlm.py checks the rest)."""
    from fedmm.config.load import expand_sweeps

    combos = expand_sweeps(
        ["experiment=fedumm_paper", "task.dataset=HuggingFaceM4/VQAv2", "task.eval_split=validation[:50%]"]
    )
    cells = [load_settings(c) for c in combos]
    assert sorted((s.num_clients, s.partition.alpha) for s in cells) == [
        (k, a) for k in (2, 4, 8, 16) for a in (0.1, 0.5, 1.0)
    ]
    for s in cells:
        assert (s.rounds, s.lr_schedule, s.grad_accum_steps, s.lr, s.weight_decay, s.batch_size, s.local_epochs) == (
            100,
            "constant",
            8,
            2e-5,
            0.01,
            32,
            5,
        )
        assert (s.model.name, s.model.lora_r, s.model.lora_alpha, s.partition.name) == (
            "blip_vqa",
            16,
            32.0,
            "dirichlet",
        )
        assert (s.task.dataset, s.task.eval_split) == ("HuggingFaceM4/VQAv2", "validation[:50%]")
    assert cli.main(["run", "experiment=fedumm_paper", "task.root=/data/vqav2"]) == 2
    assert "is a sweep over num_clients, partition.alpha: add -m" in capsys.readouterr().err


def test_a_hugging_face_dataset_by_name_with_the_seeds_split_strings(tmp_path, monkeypatch):
    """`task.dataset` goes through datasets.load_dataset (a local folder here; a hub name reads the cache offline),
    and the seed's `validation[:50%]` split strings work; decoded images are written once under $FEDMM_CACHE."""
    monkeypatch.setenv("FEDMM_CACHE", str(tmp_path / "cache"))
    vqa = D.write_vqav2(tmp_path / "vqa")
    official = _load(vqa)
    (tmp_path / "hub").mkdir()
    parquet = _write_parquet(vqa, tmp_path / "hub" / "data")
    s = load_settings(["task=vqav2", f"task.dataset={parquet.parent}", "task.eval_split=validation[:50%]"])
    data = load_task(s.task, seed=0)
    assert len(data.train) == 48 and len(data.val) + len(data.test) == 24  # half of the 48 validation questions
    assert [data.train.references(i) for i in range(48)] == [official.train.references(i) for i in range(48)]
    np.testing.assert_array_equal(data.train.images[0], official.train.images[0])
    assert len(list((tmp_path / "cache" / "vqav2").rglob("*.img"))) == 48 + 24
    with pytest.raises(FedmmError, match="task=vqav2 needs one of task.root"):
        _load(vqa, f"task.dataset={parquet.parent}")
