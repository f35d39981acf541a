"""task=table, bring-your-own data, from the shell: a CSV of image paths, a JSONL, a Parquet file of image bytes,
per-site folders and a Hugging Face dataset folder read by `datasets.load_dataset`; single-label and multilabel;
bad rows as one line."""

import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import fedmm, metrics, untrained
from fedmm.data.table import TableConfig, count_sites, load_table
from fedmm.errors import FedmmError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
WORDS = "the a poster shows an item with some shape on plain background".split()
RUN = [
    "model=fusion_tiny",
    "task.image_size=16",
    "num_clients=2",
    "rounds=2",
    "batch_size=16",
    "lr=0.01",
    "progress=false",
]


def png(colour: str, rng) -> bytes:
    pixels = np.clip(np.full((20, 24, 3), COLOURS[colour]) + rng.normal(0, 20, (20, 24, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rows(n: int, seed: int = 0):
    """n examples: the image's colour is the label; the text names a size (the second label when multilabel) among
    filler words, a few hundred characters long like a real caption or plot."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        colour = list(COLOURS)[i % 3]
        size = ["big", "small"][(i // 3) % 2]
        text = " ".join(rng.choice(WORDS, 40)) + f" it is {size}"
        out.append({"id": i, "colour": colour, "size": size, "text": text, "png": png(colour, rng)})
    return out


def write_csv(folder, examples, multilabel=False, name="data.csv", site=None):
    """The examples as a CSV with image paths; `site(example)` adds a hospital_id column."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "label"] + (["hospital_id"] if site else []))
        for e in examples:
            (folder / "images" / f"{e['id']}.png").write_bytes(e["png"])
            label = f"{e['colour']}|{e['size']}" if multilabel else e["colour"]
            w.writerow([f"images/{e['id']}.png", e["text"], label] + ([site(e)] if site else []))
    return folder / name


def test_single_label_csv_runs_from_the_shell_and_learns(tmp_path):
    path = write_csv(tmp_path, rows(150))
    run = tmp_path / "run"
    proc = fedmm("run", "task=table", f"task.path={path}", *RUN, "rounds=4", f"output_dir={run}")
    assert "eval_accuracy" in proc.stdout
    final = metrics(run)[-1]
    # The colour is plain to see: far above chance (1/3) and the untrained model (measured 0.067 -> 0.933).
    assert final["eval_accuracy"] >= 0.9
    assert final["eval_accuracy"] > untrained(["task=table", f"task.path={path}", *RUN], tmp_path)["accuracy"] + 0.5
    partition = json.loads((run / "partition.json").read_text())
    # 150 less 10% test, 10% validation; each client holds out its own 10% for client_eval (the default)
    assert sum(c["num_examples"] + c["test_examples"] for c in partition) == 120


def test_multilabel_jsonl_is_scored_with_f1(tmp_path):
    data = rows(60)
    (tmp_path / "img").mkdir()
    with open(tmp_path / "d.jsonl", "w") as f:
        for e in data:
            (tmp_path / "img" / f"{e['id']}.png").write_bytes(e["png"])
            f.write(
                json.dumps({"picture": f"img/{e['id']}.png", "caption": e["text"], "tags": [e["colour"], e["size"]]})
            )
            f.write("\n")
    run = tmp_path / "run"
    fedmm(
        "run",
        "task=table",
        f"task.path={tmp_path / 'd.jsonl'}",
        "task.image_column=picture",
        "task.text_column=caption",
        "task.label_column=tags",
        "task.label_separator=|",
        *RUN,
        f"output_dir={run}",
    )
    final = metrics(run)[-1]
    assert {"eval_micro_f1", "eval_macro_f1", "eval_samples_f1"} <= set(final)
    cfg = TableConfig(
        path=str(tmp_path / "d.jsonl"),
        image_column="picture",
        text_column="caption",
        label_column="tags",
        label_separator="|",
        image_size=16,
    )
    task = load_table(cfg, 0)
    assert task.train.label_names == ("big", "blue", "green", "red", "small")
    assert task.train.labels.shape == (48, 5) and (task.train.labels.sum(1) == 2).all()


def test_parquet_bytes_with_a_test_file_and_per_site_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(path, examples):
        pq.write_table(
            pa.table(
                {
                    "image": [e["png"] for e in examples],
                    "text": [e["text"] for e in examples],
                    "label": [e["colour"] for e in examples],
                }
            ),
            path,
        )

    data = rows(90)
    broken = [dict(data[0], png=data[0]["png"][:40]), *data[1:20]]  # an image cut short inside the file
    parquet(tmp_path / "broken.parquet", broken)
    with pytest.raises(
        FedmmError, match=r"broken.parquet row 0: cannot read image bytes at \S+broken.parquet row 0 \("
    ):
        load_table(TableConfig(path=str(tmp_path / "broken.parquet"), image_size=16), 0)
    parquet(tmp_path / "test.parquet", data[:30])
    for k in range(3):
        (tmp_path / "sites" / f"site{k}").mkdir(parents=True)
        parquet(tmp_path / "sites" / f"site{k}" / "train.parquet", data[30 + 20 * k : 50 + 20 * k])
    write_csv(tmp_path / "sites" / "site0", data[:5], name="val.csv")
    write_csv(tmp_path / "sites" / "site1", data[5:12], name="test.csv")
    cfg = TableConfig(root=str(tmp_path / "sites"), test_path=str(tmp_path / "test.parquet"), image_size=16)
    task = load_table(cfg, 0)
    assert [len(c) for c in task.clients] == [20, 20, 20] and len(task.test) == 30
    assert len(task.client_val[0]) == 5 and task.client_val[1] is None
    assert task.client_test[0] is None and len(task.client_test[1]) == 7
    run = tmp_path / "run"
    proc = fedmm(
        "run",
        "task=table",
        f"task.root={tmp_path / 'sites'}",
        f"task.test_path={tmp_path / 'test.parquet'}",
        *[a for a in RUN if a != "num_clients=2"],
        f"output_dir={run}",
    )
    assert len(metrics(run)) == 2 and "eval_accuracy" in proc.stdout
    assert [c["num_examples"] for c in json.loads((run / "partition.json").read_text())] == [20, 20, 20]
    # client_eval: site 1 scores on its test.csv, site 0 on its val.csv (said once), site 2 has neither
    assert {k: v["num_examples"] for k, v in metrics(run)[-1]["client_eval"].items()} == {"0": 5, "1": 7}
    assert "client(s) 2 have no test or validation data; left out" in proc.stdout


def test_sites_with_disjoint_labels_share_one_label_space(tmp_path):
    """Site 0 holds only red, site 1 only green and blue: every site's label indices are the task's (the sorted
    names of all sites' training rows), so site 0's first class is not site 1's."""
    data = rows(60)
    by = lambda *cs: [e for e in data if e["colour"] in cs]  # noqa: E731
    write_csv(tmp_path / "sites" / "site0", by("red")[:10], name="train.csv")
    write_csv(tmp_path / "sites" / "site1", by("green", "blue")[:20], name="train.csv")
    write_csv(tmp_path / "sites" / "site1", by("blue")[10:14], name="test.csv")
    write_csv(tmp_path, by("red", "green", "blue")[40:], name="test.csv")
    cfg = TableConfig(root=str(tmp_path / "sites"), test_path=str(tmp_path / "test.csv"), image_size=12)
    task = load_table(cfg, 0)
    assert task.clients[1].images.shape[1:] == (12, 12, 3) == task.test.images.shape[1:]  # 20 x 24 PNGs, resized
    assert count_sites(cfg) == 2 and count_sites(TableConfig(path="data.csv")) is None  # num_clients from folders
    names = task.test.label_names
    assert names == ("blue", "green", "red") and all(c.label_names == names for c in task.clients)
    assert set(task.clients[0].labels) == {2} and set(task.clients[1].labels) == {0, 1}
    assert task.client_test[1].label_names == names and set(task.client_test[1].labels) == {0}
    assert [names[i] for i in task.test.labels] == [e["colour"] for e in by("red", "green", "blue")[40:]]


def test_a_hugging_face_dataset_folder_through_datasets(tmp_path):
    import datasets

    data = rows(60)
    features = datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(COLOURS))}
    )
    for split, part in (("train", data[:45]), ("test", data[45:])):
        ds = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": e["png"], "path": None} for e in part],
                "text": [e["text"] for e in part],
                "label": [list(COLOURS).index(e["colour"]) for e in part],
            },
            features=features,
        )
        (tmp_path / "hf" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(tmp_path / "hf" / "data" / f"{split}-00000-of-00001.parquet"))
    cfg = TableConfig(dataset=str(tmp_path / "hf"), test_split="test", split="train[:80%]", image_size=16)
    task = load_table(cfg, 0)
    assert len(task.test) == 15 and len(task.train) + len(task.val) == 36  # train[:80%] of 45, less 10% for val
    run = tmp_path / "run"
    fedmm("run", "task=table", f"task.dataset={tmp_path / 'hf'}", "task.test_split=test", *RUN, f"output_dir={run}")
    assert metrics(run)[-1]["round"] == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"path": "", "root": ""}, "task=table needs exactly one of task.path"),
        ({"image_column": "img"}, "no image column 'img' (has: image, text, label); set task.image_column"),
        ({"zero_division": 2}, "task.zero_division=2 is out of range"),
        ({"path": "x.txt"}, "fedmm reads .csv, .jsonl, .parquet files"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, change, message):
    path = write_csv(tmp_path, rows(12))
    cfg = TableConfig(**{"path": str(path), "image_size": 16, **change})
    with pytest.raises(FedmmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_table(cfg, 0)


def test_bad_rows_stop_or_are_skipped_with_their_line(tmp_path):
    path = write_csv(tmp_path, rows(30))
    text = path.read_text().splitlines()
    text[3] = "../outside.png,some text,red"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(FedmmError, match=r"data.csv line 4: image '../outside.png' points outside"):
        load_table(TableConfig(path=str(path), image_size=16), 0)
    task = load_table(TableConfig(path=str(path), image_size=16, on_bad_sample="skip"), 0)
    assert len(task.train) + len(task.val) + len(task.test) == 29
    text[3] = ",some text,red"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(FedmmError, match=r"data.csv line 4: no image; "):
        load_table(TableConfig(path=str(path), image_size=16), 0)
    proc = fedmm("run", "task=table", f"task.path={path}", *RUN, f"output_dir={tmp_path / 'r'}", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "task.on_bad_sample=skip" in proc.stderr


def test_only_the_per_site_form_counts_as_per_site_folders():
    """`fedmm export nvflare --site ...` trusts a site list only for tasks whose data sits in per-site folders."""
    from fedmm.data.tasks import has_sites

    assert has_sites(TableConfig(root="sites", test_path="t.csv"))
    assert not has_sites(TableConfig(path="data.csv"))


def test_files_and_cells_that_cannot_be_read_are_one_line_errors_or_bad_samples(tmp_path):
    """Every case here ended in "a bug" before: not UTF-8, JSONL lines that are not objects, a 5,000-digit
    integer, a NUL byte or a link loop in an image path, a label that is a mapping or NaN, empty and cut Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = tmp_path / "imgs"
    images.mkdir()
    rows = []
    for i in range(8):
        Image.fromarray(np.full((8, 8, 3), i * 30, np.uint8)).save(images / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "text": f"t {i}", "label": "ab"[i % 2]})
    (images / "loop1.png").symlink_to("loop2.png")
    (images / "loop2.png").symlink_to("loop1.png")
    good = "".join(json.dumps(r) + "\n" for r in rows)
    csv_rows = "image,text,label\n" + "".join(f"{r['image']},{r['text']},{r['label']}\n" for r in rows)

    def load(name: str, data, mode="error"):
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        cfg = TableConfig(path=str(path), image_size=8, test_fraction=0.25, val_fraction=0, on_bad_sample=mode)
        return load_table(cfg, seed=0)

    for name, data, words in (
        ("latin1.csv", (csv_rows + "imgs/0.png,caf\xe9,a\n").encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
        ("latin1.jsonl", good.encode() + b'{"image": "imgs/0.png", "text": "caf\xe9", "label": "a"}\n', "not UTF-8"),
        ("big.jsonl", good + '{"image": "imgs/0.png", "label": ' + "1" * 5000 + "}\n", "line 9 is not JSON (Exceeds"),
        ("empty.parquet", b"", "is not a readable Parquet file (Could not open Parquet input source '"),
    ):
        for mode in ("error", "skip"):
            with pytest.raises(FedmmError, match=re.escape(words)):
                load(name, data, mode)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "whole.parquet")
    whole = (tmp_path / "whole.parquet").read_bytes()
    with pytest.raises(FedmmError, match=r"cut.parquet is not a readable Parquet file \(\w.+\); write it again$"):
        load("cut.parquet", whole[: len(whole) // 2])
    for name, data, words in (
        ("five.jsonl", good + "5\n", "line 9: not an object with image, text and label"),
        ("null.jsonl", good + "null\n", "line 9: not an object"),
        ("noimage.jsonl", good + '{"image": null, "text": "t", "label": "a"}\n', "line 9: no image; "),
        ("nolabel.jsonl", good + '{"image": "imgs/0.png", "text": "t", "label": " "}\n', "line 9: no label; "),
        ("nul.csv", csv_rows + "imgs/0\x00.png,x,a\n", "line 10: image path 'imgs/0\\x00.png' cannot be resolved"),
        ("loop.csv", csv_rows + "imgs/loop1.png,x,a\n", "line 10: image path 'imgs/loop1.png' cannot be resolved"),
        ("dict.jsonl", good + json.dumps({"image": "imgs/0.png", "text": "", "label": {"a": 1}}) + "\n", "a dict"),
        ("nan.jsonl", good + '{"image": "imgs/0.png", "text": "", "label": NaN}\n', "the label is a float (nan)"),
    ):
        with pytest.raises(FedmmError, match=re.escape(words)):
            load(name, data)
        data = load(name, data, "skip")  # skipped: the classes are the good rows' only
        assert data.train.label_names == ("a", "b") and len(data.train) + len(data.test) == 8


def test_a_column_that_names_each_rows_site_is_the_natural_id_split(tmp_path):
    """task.site_column: one client per hospital, in sorted order, each with exactly its rows (after the server's
    test and validation rows are taken), counted before the data is loaded; partition.json names the site; the
    same split again; num_clients must match, and a file without that column is one line."""
    from fedmm.config import load_settings
    from fedmm.data.summary import partition_summary
    from fedmm.experiment import load_data, split_clients

    data = rows(90)
    hospital = lambda e: ["st-anne", "mercy", "general"][e["id"] % 3 if e["id"] < 45 else (e["id"] // 7) % 3]  # noqa: E731
    path = write_csv(tmp_path, data, site=hospital)
    args = ["task=table", f"task.path={path}", "task.site_column=hospital_id", "model=fusion_tiny", "client_eval=none"]
    settings = load_settings(args)
    assert count_sites(settings.task) == 3
    task = load_data(settings)
    clients, _ = split_clients(settings, task)
    by_text = {e["text"]: hospital(e) for e in data}
    assert [sorted({by_text[t] for t in c.texts}) for c in clients] == [["general"], ["mercy"], ["st-anne"]]
    server_rows = len(task.test) + len(task.val)
    assert sum(len(c) for c in clients) == len(data) - server_rows
    for c, site in zip(clients, ["general", "mercy", "st-anne"]):
        assert len(c) == sum(by_text[t] == site for t in by_text) - sum(
            by_text[t] == site for t in task.test.texts
        ) - sum(by_text[t] == site for t in task.val.texts)
    assert [s["site"] for s in partition_summary(clients)] == ["general", "mercy", "st-anne"]
    again, _ = split_clients(settings, load_data(settings))
    assert [c.texts for c in again] == [c.texts for c in clients]
    out = fedmm("run", *args, "num_clients=2", f"output_dir={tmp_path / 'run'}", check=False)
    assert out.returncode == 2 and "names 3 sites" in out.stderr and "set num_clients=3 or null" in out.stderr
    with pytest.raises(FedmmError, match="no row names a site in column 'ward'"):
        count_sites(TableConfig(path=str(path), site_column="ward"))
