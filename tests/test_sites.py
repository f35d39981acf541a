"""Sites authenticated and contained: a partition-id cannot be taken over, a site's state folder is its own, the warm
worker's folder is private and its messages carry no pickle, and an exported NVFlare job holds no path of the
exporting machine."""

import os
import pickle
from pathlib import Path

import pytest

from fedmm.errors import SiteRefusal
from fedmm.runtime.remote import SITE_STATE_ENV, state_dir

from conftest import fedmm


class FakeGrid:
    def __init__(self, nodes: dict[int, int]):
        self.partition = dict(nodes)  # node id -> the partition-id it claims
        self.connected = set(nodes)

    def get_node_ids(self):
        return sorted(self.connected)


def test_a_second_supernode_cannot_take_a_partition_id_in_use(flower_messages):
    from fedmm.runtime.flower.messages import query_reply
    from fedmm.runtime.flower.server import GridClients

    class Clients(GridClients):
        def _exchange(self, messages, timeout):  # each SuperNode answers with the partition-id it claims
            return [query_reply(m, self.grid.partition[m.metadata.dst_node_id]) for m in messages]

    grid = FakeGrid({11: 0, 12: 1})
    clients = Clients(grid, num_clients=2, min_clients=1, request={}, round_timeout=1, connect_timeout=1)
    assert clients.nodes == {0: 11, 1: 12}
    grid.partition[13], grid.connected = 0, grid.connected | {13}
    clients._ask([13], 1.0)
    assert clients.nodes[0] == 11  # refused while 11 is connected
    grid.connected.discard(11)
    grid.partition[14], grid.connected = 0, grid.connected | {14}
    clients._ask([14], 1.0)
    assert clients.nodes[0] == 14  # 11 is gone: its place can be taken


def test_the_site_decides_its_state_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(SITE_STATE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    request = {"run": "run-1", "runtime": "flower", "state_dir": "/etc"}  # an old server's suggestion: ignored
    assert state_dir({}, request) == tmp_path / "home" / ".fedmm" / "flower-state" / "run-1"
    assert state_dir({"state-dir": str(tmp_path / "s")}, request) == tmp_path / "s" / "run-1"
    assert state_dir({}, {**request, "runtime": "../../x"}).parent.name == "remote-state"
    for run in ("../../etc", "/etc", "a/b", "..", ""):
        with pytest.raises(SiteRefusal, match="not a plain folder name"):
            state_dir({}, {**request, "run": run})
    monkeypatch.setenv(SITE_STATE_ENV, str(tmp_path / "sim"))  # what a simulation sets for the sites it starts
    assert state_dir({}, request) == tmp_path / "sim"


def test_the_worker_folder_is_private_and_messages_carry_no_pickle(tmp_path):
    from fedmm.runtime.flower.worker import pack, unpack, worker_dir

    fresh = worker_dir({"worker-dir": str(tmp_path / "w")})
    assert fresh.stat().st_mode & 0o777 == 0o700
    assert worker_dir({"worker-dir": str(fresh)}) == fresh  # its own private folder: reused
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(PermissionError, match="not a private folder of this user"):
        worker_dir({"worker-dir": str(loose)})
    (tmp_path / "link").symlink_to(fresh)
    with pytest.raises(PermissionError, match="not a private folder"):
        worker_dir({"worker-dir": str(tmp_path / "link")})
    meta, blob = unpack(pack({"request": {"run": "r"}}, b"\x00tensor-bytes"))
    assert meta == {"request": {"run": "r"}} and blob == b"\x00tensor-bytes"
    evil = pickle.dumps(os.getpid)
    with pytest.raises(ValueError):  # not a frame: a pickle is never unpickled
        unpack(evil)


@pytest.mark.slow
def test_exported_job_has_no_path_of_the_exporting_machine(tmp_path, tiny_args):
    pytest.importorskip("nvflare")
    out = fedmm("export", "nvflare", str(tmp_path / "bad"), *tiny_args, "output_dir=runs/x", check=False)
    assert out.returncode == 2 and "output_dir=runs/x is relative; give the absolute path" in out.stderr
    job = tmp_path / "job"
    fedmm("export", "nvflare", str(job), *tiny_args, "num_clients=2", "output_dir=/srv/fedmm-runs/x", cwd=tmp_path)
    machine = [str(Path.home()), str(tmp_path), str(Path(__file__).resolve().parent.parent)]
    for f in job.rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert not [p for p in machine if p in text], f


def test_sites_receive_no_server_paths(tmp_path):
    from fedmm.config import load_settings
    from fedmm.runtime.remote import site_settings

    s = load_settings(["task=synthetic", "model=fusion_tiny", f"output_dir={tmp_path}/run"])
    text = site_settings(s)
    assert str(tmp_path) not in text and "output_dir" not in text
