import os

import numpy as np
import pytest

from fedmm.fl.update import Update

from fedmm.params import (
    atomic_write_bytes,
    bytes_metadata,
    load_params,
    params_from_bytes,
    params_to_bytes,
    save_params,
)
from fedmm.rundir import RunDir, flatten_state, unflatten_state


def test_params_roundtrip_and_size_is_real():
    p = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}
    blob = params_to_bytes(p)
    back = params_from_bytes(blob)
    assert set(back) == set(p)
    for k in p:
        np.testing.assert_array_equal(back[k], p[k])
        assert back[k].dtype == p[k].dtype
    assert len(blob) >= 6 * 4 + 4 * 2


def test_update_roundtrip_keeps_metadata():
    u = Update(3, {"w": np.ones(2, np.float32)}, 17, {"train_loss": 0.5}, frozenset({"text"}), {"f1_before": 0.1})
    v = Update.from_bytes(u.to_bytes())
    assert (v.client_id, v.num_examples, v.metrics, v.modalities, v.extra) == (
        3,
        17,
        {"train_loss": 0.5},
        frozenset({"text"}),
        {"f1_before": 0.1},
    )


def test_atomic_save_leaves_no_temp_files(tmp_path):
    save_params(tmp_path / "g.safetensors", {"w": np.zeros(3, np.float32)})
    save_params(tmp_path / "g.safetensors", {"w": np.ones(3, np.float32)})
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]
    np.testing.assert_array_equal(load_params(tmp_path / "g.safetensors")["w"], np.ones(3))


def test_strategy_state_roundtrip_through_checkpoint(tmp_path):
    state = {"step": 3, "m": {"w": np.ones(2, np.float32)}, "name": "x", "hist": [1.0, 2.0]}
    arrays, rest = flatten_state(state)
    assert set(arrays) == {"m/w"}
    rd = RunDir(tmp_path).create()
    rd.save_checkpoint(1, {"w": np.zeros(2, np.float32)}, state, keep=2)
    rd.save_checkpoint(2, {"w": np.ones(2, np.float32)}, state, keep=2)
    rd.save_checkpoint(3, {"w": np.full(2, 2.0, np.float32)}, state, keep=2)
    assert [p.name for p in rd.checkpoints()] == ["round_0002", "round_0003"]
    rnd, params, back, _ = rd.latest_checkpoint()
    assert rnd == 3 and params["w"][0] == 2.0
    assert back["step"] == 3 and back["hist"] == [1.0, 2.0]
    np.testing.assert_array_equal(back["m"]["w"], state["m"]["w"])
    assert unflatten_state(arrays, rest)["name"] == "x"


def test_truncated_metrics_line_is_ignored(tmp_path):
    rd = RunDir(tmp_path).create()
    rd.append_metrics({"round": 1})
    with open(rd.metrics_path, "a") as f:
        f.write('{"round": 2, "trunc')
    assert rd.read_metrics() == [{"round": 1}]


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and not any(target.iterdir())


def test_atomic_writes_make_folders_and_stage_beside_the_target(tmp_path, monkeypatch):
    assert bytes_metadata(params_to_bytes({"w": np.zeros(1, np.float32)})) == {}  # no metadata: an empty dict
    target = tmp_path / "a" / "b" / "global.safetensors"
    staged = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (staged.append(src), real_replace(src, dst))[1])
    atomic_write_bytes(target, b"data")  # missing parent folders are made
    assert target.read_bytes() == b"data"
    # staged in the target's own folder (same file system: the rename is atomic), hidden, named after it
    assert os.path.dirname(staged[0]) == str(target.parent)
    assert os.path.basename(staged[0]).startswith(".global.safetensors.")

    def fail(src, dst):
        os.unlink(src)  # the staged file is already gone: cleaning up must not hide the real error
        raise RuntimeError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_bytes(target, b"other")
    assert target.read_bytes() == b"data"
