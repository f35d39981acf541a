"""Run integrity and bad input: one writer per run, resume that survives damaged files, a run's identity fixed,
every bad value a one-line error, input files contained, nothing deleted that fedmm did not write."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG, TINY, fedmm, metrics
from fedmm.errors import FedmmError
from fedmm.rundir import RunDir


def _run(tmp_path, name="run", *extra, rounds=3):
    out = tmp_path / name
    fedmm("run", *TINY, f"rounds={rounds}", "keep_checkpoints=0", "progress=false", *extra, f"output_dir={out}")
    return out


def _refused(proc, *words):
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err


# -- one writer ---------------------------------------------------------------------------------------------------
HOLD = """
import sys
from fedmm.rundir import RunDir
rd = RunDir(sys.argv[1]).create()
rd.lock()
print("locked", flush=True)
sys.stdin.read()  # holds the lock until the test closes its stdin (or kills it)
"""


@pytest.mark.parametrize("how", ["run", "resume"])
def test_a_second_writer_is_refused_and_touches_nothing(tmp_path, how):
    run = _run(tmp_path, rounds=1) if how == "resume" else tmp_path / "new"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        args = [f"resume={run}", "rounds=2"] if how == "resume" else [*TINY, "rounds=1", f"output_dir={run}"]
        _refused(fedmm("run", *args, check=False), "in use by another fedmm process", f"pid {holder.pid}")
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()


# -- damaged checkpoints ------------------------------------------------------------------------------------------
def _damage(folder: Path, how: str) -> None:
    if how == "truncated global":
        data = (folder / "global.safetensors").read_bytes()
        (folder / "global.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "zeroed global":
        (folder / "global.safetensors").write_bytes(b"\0" * (folder / "global.safetensors").stat().st_size)
    elif how == "cut state.json":
        (folder / "state.json").write_text((folder / "state.json").read_text()[:20])
    elif how == "missing strategy":
        (folder / "strategy.safetensors").unlink()
    elif how in ("no checksums", "another round", "strategy not a mapping"):  # the blobs intact, state.json not
        meta = json.loads((folder / "state.json").read_text())
        if how == "no checksums":
            del meta["sha256"]
        else:
            meta.update({"round": 7} if how == "another round" else {"strategy": []})
        (folder / "state.json").write_text(json.dumps(meta))
    elif how == "flipped byte":  # still a valid safetensors file: only the checksum can tell
        data = bytearray((folder / "global.safetensors").read_bytes())
        data[-1] ^= 0x01
        (folder / "global.safetensors").write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how",
    [
        "truncated global",
        "zeroed global",
        "cut state.json",
        "missing strategy",
        "flipped byte",
        "empty newer folder",
        "no checksums",
        "another round",
        "strategy not a mapping",
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, how, capsys):
    rd = RunDir(tmp_path).create()

    for r in (1, 2, 3):
        rd.save_checkpoint(r, {"w": np.full(4, float(r), np.float32)}, {"m": {"w": np.ones(2)}}, identity={"a": 1})
    if how == "empty newer folder":
        (tmp_path / "checkpoints" / "round_0009").mkdir()
        expect = 3
    else:
        _damage(tmp_path / "checkpoints" / "round_0003", how)
        expect = 2
    rnd, params, state, ident = rd.latest_checkpoint()
    assert rnd == expect and params["w"][0] == float(expect) and ident == {"a": 1}
    why = {
        "no checksums": "state.json holds no checksums (every checkpoint fedmm writes has them)",
        "another round": "state.json does not describe this checkpoint",
        "strategy not a mapping": "state.json does not describe this checkpoint",
        "flipped byte": "global.safetensors does not match its checksum",
    }.get(how, "")
    assert f"is damaged ({why}" in capsys.readouterr().out


def test_json_a_person_opens_is_indented(tmp_path):
    RunDir(tmp_path).create().write_json("partition.json", {"a": [1]})
    assert (tmp_path / "partition.json").read_text() == '{\n  "a": [\n    1\n  ]\n}\n'


@pytest.mark.slow
def test_resume_past_a_zeroed_checkpoint_ends_bit_identical(tmp_path):
    full = _run(tmp_path, "full", rounds=4)
    damaged = _run(tmp_path, "damaged", rounds=3)
    _damage(damaged / "checkpoints" / "round_0003", "zeroed global")
    out = fedmm("run", f"resume={damaged}", "rounds=4")
    assert "checkpoint round_0003 is damaged" in out.stdout and "resuming" in out.stdout
    assert [r["round"] for r in metrics(damaged)] == [1, 2, 3, 4]
    assert [json.loads(l)["round"] for l in (damaged / "metrics.set-aside.jsonl").read_text().splitlines()] == [3]
    assert (full / "global.safetensors").read_bytes() == (damaged / "global.safetensors").read_bytes()


# -- metrics.jsonl ------------------------------------------------------------------------------------------------
def test_metrics_lines_torn_or_damaged(tmp_path, caplog):
    rd = RunDir(tmp_path).create()
    for r in (1, 2, 3):
        rd.append_metrics({"round": r})
    lines = rd.metrics_path.read_text().splitlines()
    rd.metrics_path.write_text("\n".join(lines[:2]) + '\n{"round": 3, "trun')
    assert rd.read_metrics() == [{"round": 1}, {"round": 2}]
    assert "cut short" in caplog.text
    rd.metrics_path.write_text(lines[0] + "\ngarbage\n" + lines[2] + "\n")
    with pytest.raises(FedmmError, match="metrics.jsonl line 2 is damaged"):
        rd.read_metrics()
    rd.metrics_path.write_text("\n".join(lines) + "\n")
    rd.set_aside_metrics("round", 1)
    assert rd.read_metrics() == [{"round": 1}]
    assert (tmp_path / "metrics.set-aside.jsonl").read_text().splitlines() == lines[1:]


@pytest.mark.slow
def test_resume_with_a_damaged_metrics_line_changes_nothing(tmp_path):
    run = _run(tmp_path)
    text = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(text[0] + "\nnot json\n" + text[2] + "\n")
    before = (run / "metrics.jsonl").read_text()
    _refused(fedmm("run", f"resume={run}", "rounds=4", check=False), "metrics.jsonl line 2 is damaged")
    assert (run / "metrics.jsonl").read_text() == before and not (run / "checkpoints" / "round_0004").exists()


# -- a run's identity ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_damaged_run_folders_are_one_line_errors_or_skipped_checkpoints(tmp_path):
    from fedmm.experiment import build_server
    from fedmm.config import load_settings

    run = _run(tmp_path, rounds=2)
    rd = RunDir(run)
    (run / "checkpoints" / "round_0006.bak").mkdir()  # a user's copy, and a folder fedmm never names so
    (run / "checkpoints" / "round_x").mkdir()
    assert [p.name for p in rd.checkpoints()] == ["round_0001", "round_0002"]
    state = run / "checkpoints" / "round_0002" / "state.json"
    meta = json.loads(state.read_text())
    state.write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))  # no checksums: damage
    assert rd.latest_checkpoint()[0] == 1
    state.write_text("[1, 2]")  # not a mapping
    assert rd.latest_checkpoint()[0] == 1
    state.write_text(json.dumps(meta))
    (run / "global.safetensors").unlink()  # restored from the newest intact checkpoint on resume
    fed = build_server(load_settings([f"resume={run}", "rounds=2"]))
    assert (
        fed.start_round == 3
        and (run / "global.safetensors").read_bytes()
        == (run / "checkpoints" / "round_0002" / "global.safetensors").read_bytes()
    )
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([*lines[:-1], lines[-1].replace('"round": 2', '"round": null')]))
    with pytest.raises(FedmmError, match=r"metrics.jsonl line 2 has no round \(or epoch\) number >= 1"):
        rd.read_metrics()
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    import shutil

    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a folder")
    _refused(fedmm("run", f"resume={run}", check=False), "checkpoints is not a folder; move it away")
    _refused(fedmm("run", "-m", "rounds=range(0)", *TINY, check=False), "sweeps over no values")


@pytest.mark.parametrize(
    "change, shown",
    [
        ("seed=5", "seed: 0 -> 5"),
        ("lr=0.5", "lr: 0.001 -> 0.5"),
        ("partition.alpha=0.9", "partition.alpha: 0.5 -> 0.9"),
        ("lr=0.5 seed=5", "lr: 0.001 -> 0.5 and 1 more"),
    ],
)
def test_a_resume_that_changes_what_the_run_computes_is_refused(tmp_path, change, shown):
    """The identity a checkpoint records holds the seed (it draws the split, the clients, the noise) and every
    other setting that changes the result; how long a run goes may change."""
    from fedmm.config import load_settings
    from fedmm.config.load import identity
    from fedmm.experiment.server import resume_point

    settings = lambda *more: load_settings([*TINY, "seed=0", "lr=0.001", *more])  # noqa: E731
    rd = RunDir(tmp_path).create()
    rd.append_metrics({"round": 1})
    rd.save_checkpoint(1, {"w": np.zeros(2, np.float32)}, {}, identity=identity(settings()))
    assert resume_point(rd, settings())[0] == 1 and resume_point(rd, settings("rounds=9"))[0] == 1
    with pytest.raises(FedmmError, match=re.escape(f"its settings changed since round 1 ({shown})")):
        resume_point(rd, settings(*change.split()))
    rd.metrics_path.write_text("")  # round 1's record lost: its checkpoint is not trusted, the run starts over
    assert resume_point(rd, settings()) is None


def test_edited_shortened_or_malformed_runs_are_refused(tmp_path):
    run = _run(tmp_path)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("alpha: 0.5", "alpha: 0.9"))
    _refused(
        fedmm("run", f"resume={run}", "rounds=4", check=False),
        "settings changed since round 3",
        "partition.alpha: 0.5 -> 0.9",
    )
    (run / "config.yaml").write_text(config)
    _refused(fedmm("run", f"resume={run}", "rounds=2", check=False), "already completed 3 rounds", "rounds=3")
    assert (run / "config.yaml").read_text() == config
    (run / "config.yaml").write_text("rounds: [1,\n")
    _refused(fedmm("run", f"resume={run}", check=False), "config.yaml is not valid YAML")


# -- values that mean nothing, and output folders -----------------------------------------------------------------
@pytest.mark.parametrize(
    "override, words",
    [
        ("rounds=-1", "rounds=-1 is out of range: it must be an integer >= 1"),
        ("rounds=0", "rounds=0 is out of range"),
        ("num_clients=0", "num_clients=0 is out of range"),
        ("batch_size=-5", "batch_size=-5"),
        ("batch_size=0", "batch_size=0"),
        ("local_epochs=0", "local_epochs=0"),
        ("max_train_samples=0", "max_train_samples=0"),
        ("max_train_samples=-1", "max_train_samples=-1"),
        ("keep_checkpoints=-1", "keep_checkpoints=-1"),
        ("eval_every=-1", "eval_every=-1"),
        ("min_clients=0", "min_clients=0"),
        ("threads=-1", "threads=-1"),
        ("lr=nan", "lr=nan is out of range: it must be a finite number > 0"),
        ("lr=-1", "lr=-1.0"),
        ("weight_decay=nan", "weight_decay=nan"),
        ("eval_batch_size=0", "eval_batch_size=0"),
        ("seed=-1", "seed=-1"),
        ("strategy.mu=abc", "bad value for 'strategy.mu': Value 'abc' of type 'str' could not be converted to Float"),
    ],
)
def test_values_that_mean_nothing_are_one_line_errors(override, words):
    from fedmm.config import load_settings

    extra = ["strategy=fedprox"] if override.startswith("strategy.") else []
    with pytest.raises(FedmmError) as e:
        load_settings([*TINY, *extra, override])
    assert words in str(e.value) and "\n" not in str(e.value)


def test_output_dirs_that_cannot_be_used(tmp_path):
    from fedmm.config import load_settings

    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("keep me")
    cases = {
        f"{tmp_path}/file": "is a file, not a folder",
        f"{tmp_path}/file/run": "is a file, not a folder",
        "/proc/fedmm-run": "under a system folder",
        f"{tmp_path}/{'x' * 300}": "longer than 255 bytes",
        f"{tmp_path}/a\x07b": "control character",
    }
    for path, words in cases.items():
        with pytest.raises(FedmmError, match=words):
            load_settings([*TINY, f"output_dir='{path}'"])
    proc = fedmm("run", *TINY, f"output_dir={tmp_path / 'foreign'}", check=False)
    _refused(proc, "is not empty and was not made by fedmm")
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["thesis.tex"]


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_private_file(tmp_path, monkeypatch, capsys):
    from fedmm import api, cli, rundir

    def boom(settings):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(api, "run_federated", boom)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no run directory yet: the user's own error folder
    monkeypatch.setattr(rundir, "CURRENT", [])
    monkeypatch.setattr(cli, "ERRORS_KEPT", 2)
    for _ in range(3):
        assert cli.main(["run", *TINY, f"output_dir={tmp_path}/r"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unexpected RuntimeError: something inside broke" in err
    where = Path(err.split("please report it with ")[1].split(";")[0])
    assert where.parent == tmp_path / "home" / ".fedmm" / "errors" and where.parent.stat().st_mode & 0o077 == 0
    assert where.stat().st_mode & 0o077 == 0 and len(list(where.parent.iterdir())) == cli.ERRORS_KEPT
    assert "Traceback" in where.read_text() and "boom" in where.read_text()
    monkeypatch.setenv("FEDMM_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["run", *TINY, f"output_dir={tmp_path}/r2"])


@pytest.mark.slow
def test_sigterm_is_one_line_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmm.cli", "run", *TINY, "rounds=40", "progress=false", f"output_dir={run}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + HANG
    while not (run / "checkpoints" / "round_0001").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.terminate()
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == f"terminated; completed rounds are kept (continue with resume={run})"


# -- input files --------------------------------------------------------------------------------------------------
def _site(tmp_path, rows):
    from fedmm.data.bad_samples import BadSamples
    from fedmm.data.mmimdb.records import read_csv

    posters = tmp_path / "posters"
    posters.mkdir(exist_ok=True)
    csv = tmp_path / "train.csv"
    csv.write_text("img_name,text,labels\n" + "".join(f"{img},plot,Drama\n" for img in rows))
    bad = BadSamples("skip")
    return read_csv(csv, bad, posters), bad


def test_image_paths_must_stay_inside_the_posters_folder(tmp_path):
    from PIL import Image

    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    (tmp_path / "posters").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "posters" / "ok.png")
    (tmp_path / "posters" / "link.png").symlink_to(outside)
    rows, bad = _site(tmp_path, ["ok.png", "../outside.png", "../../../../outside.png", str(outside), "link.png"])
    assert [r.image.name for r in rows] == ["ok.png"]
    assert len(bad.skipped) == 4 and all("points outside the posters folder" in s for s in bad.skipped)


def test_decompression_bombs_are_bad_samples(tmp_path):
    from PIL import Image

    from fedmm.data.images import read_rgb

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # a few dozen KB on disk, 400 megapixels decoded
    assert bomb.stat().st_size < 200_000
    with pytest.raises(FedmmError, match="too large to decode safely|over fedmm's cap"):
        read_rgb(bomb)
    big = tmp_path / "big.png"
    Image.new("1", (8000, 6000)).save(big)  # under PIL's own limit, over fedmm's 40 MP
    with pytest.raises(FedmmError, match="8000 x 6000 pixels, over fedmm's cap"):
        read_rgb(big)


def test_very_long_texts_are_cut_before_tokenising(tmp_path):
    from fedmm.data.bad_samples import BadSamples
    from fedmm.data.mmimdb.records import Record, to_dataset

    rec = Record(id="1", text="word " * 2_000_000, genres=("Drama",), image=None, where="x")
    data = to_dataset([rec], ("Drama",), frozenset({"text"}), 8, BadSamples("error"), max_text_chars=20_000)
    assert len(data.texts[0]) == 20_000


def test_export_never_removes_a_partial_folder_it_did_not_make(tmp_path):
    pytest.importorskip("nvflare")
    partial = tmp_path / "job.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("mine")
    proc = fedmm("export", "nvflare", str(tmp_path / "job"), *TINY, f"output_dir={tmp_path}/run", check=False)
    _refused(proc, "job.partial exists and was not made by fedmm")
    assert (partial / "notes.txt").read_text() == "mine"


def test_a_checkpoint_whose_record_was_lost_is_computed_again(tmp_path, capsys):
    rd = RunDir(tmp_path).create()
    for r in (1, 2, 3):
        rd.append_metrics({"round": r})
        rd.save_checkpoint(r, {"w": np.full(2, float(r), np.float32)}, {})
    assert rd.latest_checkpoint(up_to=2)[0] == 2
    assert "round_0003 has no record in metrics.jsonl" in capsys.readouterr().out
