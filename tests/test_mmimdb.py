"""MM-IMDb: every layout through `fedmm prepare mmimdb` and two federated rounds, the seed's layout read directly
(zip and nested zip included), labels.json resolution, and every bad-data case with its message and exit code."""

import json
import shutil
import zipfile

import numpy as np
import pytest

import mmimdb_data as D
from conftest import fedmm, untrained
from fedmm import cli
from fedmm.data.bad_samples import BadSamples
from fedmm.data.mmimdb.layout import LABELS_ENV, find_layout, read_labels, resolve_labels
from fedmm.data.mmimdb.task import MMIMDbConfig, load_site
from fedmm.errors import FedmmError

RUN = [
    "experiment=mmimdb",
    "model=fusion_tiny",
    "task.image_size=32",
    "rounds=2",
    "batch_size=8",
    "lr=0.003",
    "progress=false",
]
MOVIES = D.movies(40)


def main(capsys, *argv):
    """The real command line, in-process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("layout", ["original", "parquet", "seed", "seed_zip", "seed_nested_zip"])
def test_prepare_then_two_federated_rounds(tmp_path, capsys, layout):
    src = tmp_path / "src"
    if layout == "original":
        D.write_original(src, MOVIES)
    elif layout == "parquet":
        D.write_parquet(src, MOVIES)
    else:
        D.write_seed(src, MOVIES, server={"seed": "csv", "seed_zip": "zip", "seed_nested_zip": "nested"}[layout])
    out = tmp_path / "out"
    code, stdout, err = main(
        capsys,
        "prepare",
        "mmimdb",
        str(src),
        str(out),
        "--num-clients",
        "3",
        "--partition",
        "dirichlet",
        "--alpha",
        "1.0",
        "--modalities",
        "1:text,2:image",
        "--test-fraction",
        "0.2",
    )
    assert code == 0, err
    assert "examples" in stdout and "Romance" in stdout and "text" in stdout  # the per-client label table
    for k in range(3):
        assert (out / "dataset" / f"client_{k}" / "train.csv").is_file()
    assert json.loads((out / "dataset" / "client_1" / "modality.json").read_text()) == {"text": True, "image": False}
    assert (out / "dataset" / "server" / "server_test.csv").is_file()
    labels = read_labels(out / "all_in_one_dataset" / "labels.json")
    assert set(D.GENRES) <= set(labels)
    test_ids = {m["id"] for m in D.official_split(MOVIES)["test"]}
    server_rows = (out / "dataset" / "server" / "server_test.csv").read_text().splitlines()[1:]
    assert {row.rsplit(",", 1)[1] for row in server_rows} == test_ids  # the official test ids go to the server

    code, stdout, err = main(capsys, "run", *RUN, f"task.root={out}", f"output_dir={tmp_path / 'run'}")
    assert code == 0, err
    recs = records(tmp_path / "run")
    assert [r["round"] for r in recs] == [1, 2]
    assert all(
        0.0 <= r[f"eval_{m}"] <= 1.0 for r in recs for m in ("micro_f1", "macro_f1", "weighted_f1", "samples_f1")
    )
    parts = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert [p["modalities"] for p in parts] == [["image", "text"], ["text"], ["image"]]
    # client_eval (default final): each site scored the global model on its own test.csv, with its own modalities
    sites = recs[-1]["client_eval"]
    for k in range(3):
        rows = (out / "dataset" / f"client_{k}" / "test.csv").read_text().splitlines()[1:]
        assert sites[str(k)]["num_examples"] == parts[k]["test_examples"] == len(rows) > 0
    assert "client_eval_micro_f1_mean" in recs[-1] and "eval_micro_f1" in recs[-1]


def test_federated_mmimdb_learns_the_genres(tmp_path, capsys):
    """150 movies whose posters carry their genres' colours and whose plots name them among hundreds of filler words,
    3 IID sites, 3 rounds: every F1 beats the untrained model's by a wide margin (measured: micro 0.42 -> 0.77,
    macro 0.29 -> 0.69)."""
    D.write_seed(tmp_path / "src", D.movies(150), server="csv")
    code, _, err = main(capsys, "prepare", "mmimdb", str(tmp_path / "src"), str(tmp_path / "out"), "--num-clients", "3")
    assert code == 0, err
    args = [*RUN, "rounds=3", "local_epochs=2", f"task.root={tmp_path / 'out'}", "client_eval=none"]
    code, _, err = main(capsys, "run", *args, f"output_dir={tmp_path / 'run'}")
    assert code == 0, err
    final, base = records(tmp_path / "run")[-1], untrained(args, tmp_path)
    assert final["eval_micro_f1"] > base["micro_f1"] + 0.2 and final["eval_macro_f1"] > base["macro_f1"] + 0.2
    assert final["eval_loss"] < base["loss"] - 0.1


def test_seed_layout_runs_directly_from_a_nested_server_zip(tmp_path, capsys):
    root = D.write_seed(tmp_path / "seed", MOVIES, server="nested")
    code, stdout, err = main(
        capsys,
        "run",
        *RUN,
        f"task.root={root}",
        f"output_dir={tmp_path / 'run'}",
        "task.tune_thresholds=true",
        "task.pos_weight=true",
    )
    assert code == 0, err
    assert "unpacked" in stdout and (root / "server_data" / "server_data" / "server_test.csv").is_file()
    last = records(tmp_path / "run")[-1]
    assert "eval_micro_f1_tuned" in last and "eval_samples_f1_tuned" in last
    # the seed's val.csv rows are the sites' own, not training rows
    assert sum(p["num_examples"] for p in json.loads((tmp_path / "run" / "partition.json").read_text())) == 20
    # the seed's sites have no test.csv: client_eval scores each on its val.csv, and says so once
    assert stdout.count("have no test data (test.csv); they score on val.csv") == 1
    assert all(site["num_examples"] == 2 for site in last["client_eval"].values())
    # the trained model predicts at the thresholds the run's _tuned figures used (tuned on the validation split)
    from fedmm.experiment.trained import load_model

    model = load_model(tmp_path / "run", "last")
    assert model.multilabel and model.thresholds is not None and len(model.thresholds) == len(model.label_names)
    assert all(0.05 <= t <= 0.95 for t in model.thresholds)


def test_centralized_trains_on_the_union_of_the_sites_with_both_modalities(tmp_path, capsys):
    D.write_original(tmp_path / "src", MOVIES)
    assert (
        main(
            capsys,
            "prepare",
            "mmimdb",
            str(tmp_path / "src"),
            str(tmp_path / "out"),
            "--num-clients",
            "2",
            "--modalities",
            "0:text",
        )[0]
        == 0
    )
    code, stdout, err = main(
        capsys,
        "centralized",
        *RUN,
        f"task.root={tmp_path / 'out'}",
        f"output_dir={tmp_path / 'c'}",
        "task.pos_weight=true",
    )
    assert code == 0, err
    assert "centralized mmimdb: 22 train" in stdout  # 24 official train rows, 10% of each site's kept as val


def test_a_site_reads_only_its_own_folder(tmp_path):
    """A site folder copied alone (its CSVs and its own posters) loads without the rest of the layout; a text-only
    site needs no posters at all."""
    root = D.write_seed(tmp_path / "seed", MOVIES)
    labels = tuple(D.GENRES)
    cfg = MMIMDbConfig(image_size=16)
    site = tmp_path / "alone" / "client_0"
    shutil.copytree(root / "dataset" / "client_0", site)
    (site / "images").mkdir()
    for line in (site / "train.csv").read_text().splitlines()[1:] + (site / "val.csv").read_text().splitlines()[1:]:
        name = line.split(",")[0]
        shutil.copy(root / "all_in_one_dataset" / "mmimdb_posters" / name, site / "images" / name)
    train, val, _ = load_site(site, labels, cfg, BadSamples("error"))
    assert len(train) == 10 and len(val) == 2 and train.images.shape == (10, 16, 16, 3)

    text_site = tmp_path / "alone" / "client_1"
    shutil.copytree(root / "dataset" / "client_1", text_site)
    (text_site / "modality.json").write_text(json.dumps({"modalities": ["text"]}))
    train, _, _ = load_site(text_site, labels, cfg, BadSamples("error"))  # no posters anywhere: not needed
    assert train.images is None and len(train.texts) == 10


def test_labels_json_resolution_order(tmp_path, monkeypatch):
    root = D.write_seed(tmp_path / "seed", MOVIES, server="zip")
    layout = find_layout(root)
    monkeypatch.delenv(LABELS_ENV, raising=False)
    shared = root / "all_in_one_dataset" / "labels.json"
    assert resolve_labels("", layout) == shared  # next to the data
    other = tmp_path / "mine.json"
    other.write_text(json.dumps(D.GENRES[::-1]))
    monkeypatch.setenv(LABELS_ENV, str(other))
    assert resolve_labels("", layout) == other  # the variable beats the data's
    explicit = tmp_path / "explicit.json"
    explicit.write_text(json.dumps(D.GENRES))
    assert resolve_labels(str(explicit), layout) == explicit  # the config beats the variable
    monkeypatch.setenv(LABELS_ENV, str(tmp_path / "typo.json"))
    with pytest.raises(FedmmError, match="LABELS_JSON_PATH=.*typo.json: no such file"):
        resolve_labels("", layout)
    monkeypatch.delenv(LABELS_ENV)
    shared.unlink()
    (root / "server_data" / "server_data" / "deep").mkdir(parents=True)
    deep = root / "server_data" / "server_data" / "deep" / "labels.json"
    deep.write_text(json.dumps(D.GENRES))
    assert resolve_labels("", layout) == deep  # the first under server_data/
    deep.unlink()
    with pytest.raises(FedmmError) as e:
        resolve_labels("", layout)
    msg = str(e.value)
    for place in ("task.labels_json", LABELS_ENV, str(shared), str(root / "labels.json"), "server_data/**"):
        assert place in msg


def _break(root, case):
    """Damage a seed layout in one way; returns the text the error must contain."""
    site = root / "dataset" / "client_0"
    rows = (site / "train.csv").read_text().splitlines()
    first = rows[1].split(",")[0]
    poster = root / "all_in_one_dataset" / "mmimdb_posters" / first
    if case == "missing_poster":
        poster.unlink()
        return f"client_0/train.csv line 2: image file not found: {poster}"
    if case == "corrupt_image":
        poster.write_bytes(b"this is not a jpeg")
        return "client_0/train.csv line 2: cannot read image"
    if case == "truncated_image":
        poster.write_bytes(poster.read_bytes()[: len(poster.read_bytes()) // 2])
        return "client_0/train.csv line 2: cannot read image"
    if case == "unknown_genre":
        rows[1] = rows[1].rsplit(",", 1)[0] + ",Drama|Telenovela"
        (site / "train.csv").write_text("\n".join(rows) + "\n")
        return "client_0/train.csv line 2: genre 'Telenovela' is not in"
    if case == "empty_csv":
        (site / "val.csv").write_text("")
        return "client_0/val.csv is empty"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing_poster", "corrupt_image", "truncated_image", "unknown_genre", "empty_csv"])
def test_bad_sample_is_a_one_line_error_or_skipped_and_counted(tmp_path, capsys, case):
    root = D.write_seed(tmp_path / "seed", MOVIES)
    expected = _break(root, case)
    code, _, err = main(capsys, "run", *RUN, f"task.root={root}", f"output_dir={tmp_path / 'run'}")
    assert code == 2 and expected in err, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "task.on_bad_sample=skip" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    code, _, err = main(
        capsys, "run", *RUN, f"task.root={root}", f"output_dir={tmp_path / 'run2'}", "task.on_bad_sample=skip"
    )
    assert code == 0, err
    assert "warning: skipped 1 bad sample(s)" in err and expected in err
    assert len(records(tmp_path / "run2")) == 2
    kept = sum(p["num_examples"] for p in json.loads((tmp_path / "run2" / "partition.json").read_text()))
    assert kept == (20 if case == "empty_csv" else 19)


def test_bad_samples_stop_prepare_before_anything_is_written(tmp_path, capsys):
    root = D.write_seed(tmp_path / "seed", MOVIES)
    expected = _break(root, "truncated_image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = main(capsys, "prepare", "mmimdb", str(root), str(out), "--num-clients", "2")
    assert code == 2 and expected in err and "--on-bad-sample=skip" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, stdout, err = main(
        capsys, "prepare", "mmimdb", str(root), str(out), "--num-clients", "2", "--on-bad-sample", "skip"
    )
    assert code == 0 and "skipped 1 bad sample(s)" in err and "23 train rows" in stdout
    code, _, err = main(capsys, "prepare", "mmimdb", str(root), str(out), "--num-clients", "2")
    assert code == 2 and "already exists" in err  # a second prepare never overwrites the first


def test_csv_missing_a_column_is_an_error_even_when_skipping(tmp_path, capsys):
    root = D.write_seed(tmp_path / "seed", MOVIES)
    path = root / "dataset" / "client_1" / "train.csv"
    rows = [r.rsplit(",", 1)[0] for r in path.read_text().splitlines()]  # drop the labels column
    path.write_text("\n".join(rows) + "\n")
    for extra in ([], ["task.on_bad_sample=skip"]):
        code, _, err = main(capsys, "run", *RUN, f"task.root={root}", f"output_dir={tmp_path / 'run'}", *extra)
        assert code == 2 and "dataset/client_1/train.csv: missing column 'labels' (has: img_name, text)" in err


def test_corrupt_zip_is_an_error_and_leaves_the_folder_as_it_was(tmp_path, capsys):
    root = D.write_seed(tmp_path / "seed", MOVIES, server="zip")
    archive = root / "server_data" / "server_data.zip"
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 3])
    code, _, err = main(capsys, "run", *RUN, f"task.root={root}", f"output_dir={tmp_path / 'run'}")
    assert code == 2 and f"{archive} is not a readable zip file" in err and "download it again" in err
    assert [p.name for p in (root / "server_data").iterdir()] == ["server_data.zip"]


def test_the_seed_example_config_runs_through_the_real_cli(tmp_path):
    """experiment=mmimdb_seed: 5 clients, client 1 text-only, clients 2 and 4 image-only, FedAvg."""
    D.write_original(tmp_path / "src", D.movies(60, seed=1))
    fedmm(
        "prepare",
        "mmimdb",
        str(tmp_path / "src"),
        str(tmp_path / "out"),
        "--num-clients",
        "5",
        "--modalities",
        "1:text,2:image,4:image",
    )
    proc = fedmm(
        "run", "experiment=mmimdb_seed", *RUN[1:], f"task.root={tmp_path / 'out'}", f"output_dir={tmp_path / 'run'}"
    )
    parts = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert [p["modalities"] for p in parts] == [["image", "text"], ["text"], ["image"], ["image", "text"], ["image"]]
    assert "eval_micro_f1" in records(tmp_path / "run")[-1] and "done in" in proc.stdout
    proc = fedmm("run", "experiment=mmimdb_seed", *RUN[1:], f"task.root={tmp_path / 'src'}", check=False)
    assert proc.returncode == 2 and "no client_<i> folders" in proc.stderr


def test_unit_helpers():
    from fedmm.data.mmimdb.records import split_genres

    assert split_genres(" Drama| Romance ||") == ("Drama", "Romance")
    assert np.array_equal(np.array(split_genres("")), np.array([]))
    bad = BadSamples("skip")
    bad("x")
    bad("y")
    assert bad.skipped == ["x", "y"]
    with pytest.raises(FedmmError, match="must be error or skip"):
        BadSamples("ignore")


def test_zero_division_reaches_the_scores_and_is_checked(tmp_path):
    from fedmm.data.mmimdb.task import load_mmimdb

    D.write_seed(tmp_path, MOVIES[:12], server="csv")
    for zd in (0, 1):
        assert load_mmimdb(MMIMDbConfig(root=str(tmp_path), image_size=32, zero_division=zd), 0).zero_division == zd
    with pytest.raises(FedmmError, match=r"task.zero_division=0.5 is out of range: it must be 0 or 1"):
        load_mmimdb(MMIMDbConfig(root=str(tmp_path), zero_division=0.5), 0)


def test_zip_members_outside_the_folder_are_refused(tmp_path):
    from fedmm.data.mmimdb.layout import unzip

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(FedmmError, match="outside"):
        unzip(archive, tmp_path)
    assert not (tmp_path.parent / "outside.txt").exists()


def test_bad_rows_of_the_original_release_and_a_corrupt_parquet_file(tmp_path, capsys):
    src = D.write_original(tmp_path / "orig", MOVIES)
    data = src / "mmimdb" / "dataset"
    (data / f"{MOVIES[0]['id']}.json").unlink()  # listed in split.json, file gone
    (data / f"{MOVIES[1]['id']}.jpeg").unlink()  # its poster gone
    code, _, err = main(capsys, "prepare", "mmimdb", str(src), str(tmp_path / "o1"), "--num-clients", "2")
    assert code == 2 and f"dataset/{MOVIES[0]['id']}.json: file missing (listed in split.json 'train')" in err
    code, stdout, err = main(
        capsys, "prepare", "mmimdb", str(src), str(tmp_path / "o1"), "--num-clients", "2", "--on-bad-sample", "skip"
    )
    assert code == 0 and "skipped 2 bad sample(s)" in err and "22 train rows" in stdout

    pq = D.write_parquet(tmp_path / "pq", MOVIES)
    (pq / "test-00000-of-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    code, _, err = main(capsys, "prepare", "mmimdb", str(pq), str(tmp_path / "o2"), "--num-clients", "2")
    assert code == 2 and "test-00000-of-00001.parquet: not a readable Parquet file" in err


def test_run_level_modality_settings_cannot_empty_a_site(tmp_path, capsys):
    D.write_original(tmp_path / "src", MOVIES)
    main(
        capsys,
        "prepare",
        "mmimdb",
        str(tmp_path / "src"),
        str(tmp_path / "out"),
        "--num-clients",
        "2",
        "--modalities",
        "1:text",
    )
    code, _, err = main(
        capsys,
        "run",
        *RUN,
        f"task.root={tmp_path / 'out'}",
        "modality.image_only=[1]",
        f"output_dir={tmp_path / 'run'}",
    )
    assert code == 2 and "client 1 would have no modality left: its data has only text" in err
