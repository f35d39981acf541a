"""The server assembly hands each setting to the part that uses it, and says what it decided (experiment/server.py);
the run folder's and the table reader's smaller rules. Fast, without a round of training, for mutation testing."""

import json

import numpy as np
import pytest

from conftest import TINY
from fedmm.config import load_settings
from fedmm.errors import FedmmError
from fedmm.experiment import build_server
from fedmm.experiment.server import say_site_test_data
from fedmm.rundir import LOCK_ENV, RunDir, check_output_dir, open_run_dir


def _build(tmp_path, *over):
    return build_server(load_settings([*TINY, "num_clients=3", *over, f"output_dir={tmp_path}"]))


def test_the_servers_settings_reach_its_checks_and_its_selection(tmp_path):
    fed = _build(tmp_path, "modality.text_only=[0]", "max_update_norm=2.5", "select_best=main")
    server = fed.server
    assert server.cfg.max_update_norm == 2.5
    image = {k for k in fed.params if fed.backend.key_modality(k) == "image"}
    assert image and not image & server.expected[0].keys  # a text-only site may not send image tensors
    assert image <= server.expected[1].keys
    assert server.selection.metric == "accuracy" == fed.data.metrics[0]
    assert set(server.evaluate_val(fed.params)) >= {"loss", "accuracy"}  # on the validation split
    assert server.evaluate_val(fed.params) != server.evaluate(fed.params)  # not the test split


def test_the_private_server_has_its_accountant_and_says_its_plan_and_what_it_turns_off(tmp_path, capsys):
    fed = _build(tmp_path / "a", "privacy=dp", "privacy.noise_multiplier=0.5")
    out = capsys.readouterr().out
    assert fed.server.privacy is not None and fed.server.privacy.noise_multiplier == 0.5
    assert "noise_multiplier=0.5, every client every round; epsilon after" in out
    assert "client_eval: off under privacy=dp" in out
    _build(tmp_path / "b", "privacy=dp", "client_eval=none")
    assert "client_eval: off" not in capsys.readouterr().out  # nothing was turned off


def test_attackers_must_be_clients_of_the_run_but_only_when_there_is_an_attack(tmp_path):
    with pytest.raises(FedmmError, match=r"attack.clients names client 5, but this experiment has 3 clients \(0..2\)"):
        _build(tmp_path / "a", "attack=nan", "attack.clients=[5]")
    _build(tmp_path / "b", "attack.clients=[5]")  # attack=none: the list is not used


def test_the_sites_client_eval_leaves_out_are_named(capsys):
    say_site_test_data([None, None, "t", None], [None, "v", None, None])
    assert capsys.readouterr().out.splitlines() == [
        "client_eval: client(s) 1 have no test data (test.csv); they score on val.csv",
        "client_eval: client(s) 0, 3 have no test or validation data; left out",
    ]


def test_a_resume_sets_aside_the_records_past_its_checkpoint(tmp_path):
    """A record written after the last checkpoint (a crash between the two) is set aside, not kept beside the
    round that is run again."""
    from fedmm import api

    settings = load_settings([*TINY, "num_clients=2", "rounds=2", "progress=false", f"output_dir={tmp_path}"])
    api.run_federated(settings)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join([*lines, json.dumps({"round": 3, "eval_loss": 1.0})]) + "\n")
    fed = build_server(load_settings([f"resume={tmp_path}", "rounds=3"]))
    assert fed.start_round == 3
    assert [r["round"] for r in RunDir(tmp_path).read_metrics()] == [1, 2]


def test_run_folders_the_default_name_spaces_and_the_inherited_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(LOCK_ENV, raising=False)  # restored afterwards: the locks below change it
    rd = open_run_dir(None, None, "centralized", "a: 1\n")
    assert rd.path.resolve().parent == tmp_path.resolve() / "runs" and rd.path.name.endswith("-centralized")
    check_output_dir(tmp_path / "my runs" / "first try")  # a space is a plain character
    with pytest.raises(FedmmError, match="control character"):
        check_output_dir(tmp_path / "a\x1fb")
    # a process this one starts for the same run inherits the hold (the lock variable names the run folder)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(LOCK_ENV, str(other.resolve()))
    RunDir(other).lock()
    assert not (other / ".lock.pid").exists()  # inherited: nothing taken again


def test_table_cells_an_image_struct_float_labels_and_rows_after_a_bad_one(tmp_path):
    import io

    from PIL import Image

    from fedmm.data.bad_samples import BadSamples
    from fedmm.data.table import TableConfig, _label_value, read_rows, to_dataset

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    cfg = TableConfig(path="x.csv", image_size=8, on_bad_sample="skip")
    records = [
        ({"image": {"bytes": png, "path": None}, "text": "a", "label": 2.0}, "row 1"),
        ({"image": "  ", "text": "b", "label": "x"}, "row 2"),  # a blank path: no image, skipped
        ({"image": None, "text": "b", "label": "x"}, "row 2b"),  # none at all: skipped
        ({"image": png, "text": "c", "label": 3}, "row 3"),  # read although rows 2 and 2b were bad
    ]
    bad = BadSamples("skip")
    rows = read_rows(records, cfg, tmp_path, bad)
    assert [r.text for r in rows] == ["a", "c"] and rows[0].labels == ("2.0",)
    assert _label_value(2.5, False) and not _label_value(float("inf"), False) and not _label_value([["a"]], True)
    strict = BadSamples("error")
    with pytest.raises(FedmmError, match=r"row 3: label '3' is not one of the task's labels \(2.0\.\.\.\)"):
        to_dataset(rows, ("2.0",), TableConfig(path="x.csv", image_size=8), strict)


def test_a_lock_held_without_its_pid_file_is_named_as_unknown(tmp_path):
    """Another process holds the folder's lock but wrote no .lock.pid (it died between the two, or is not fedmm):
    the refusal says the pid is unknown rather than naming a wrong one."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire();"
         " print('held', flush=True); sys.stdin.read()", str(tmp_path / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FedmmError, match=r"in use by another fedmm process \(pid \?\)"):
            RunDir(tmp_path).lock()
    finally:
        holder.stdin.close()
        holder.wait()
