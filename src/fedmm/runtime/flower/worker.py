"""A long-running fedmm process beside a deployed SuperNode, so that rounds do not pay for importing torch, building
the model and loading data again.

A deployed SuperNode runs every message in a fresh ClientApp process (Flower's default: isolation from the
SuperNode, nothing kept). With `runtime.warm` the ClientApp connects to this worker over a Unix socket (only the
SuperNode's user can reach it: the socket's folder is private, and the connection is authenticated with a key read
from that folder) and the worker runs `remote.fit`, keeping its model and data across rounds. The first ClientApp
starts the worker; it exits when the SuperNode's process tree is gone or after `FEDMM_WORKER_IDLE` seconds without
work (default 3600).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from fedmm.errors import SiteRefusal

START_TIMEOUT = 120.0  # seconds for a new worker to listen


def worker_dir(node_config: dict[str, Any]) -> Path:
    """The private folder of the worker's socket and key: created with mode 0700, and refused when it exists as
    anything but a folder of this user that only this user can reach (on a shared host, whoever made it first could
    otherwise talk to the worker)."""
    folder = node_config.get("worker-dir") or Path(tempfile.gettempdir()) / f"fedmm-flower-{os.getuid()}"
    folder = Path(str(folder)).expanduser()
    try:
        os.mkdir(folder, 0o700)
        os.chmod(folder, 0o700)
    except FileExistsError:
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise PermissionError(
                f"the fedmm worker folder {folder} exists but is not a private folder of this user "
                f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); remove it, or set the "
                f"SuperNode's node config worker-dir to a folder of your own"
            ) from None
    return folder


def pack(meta: dict[str, Any], blob: bytes = b"") -> bytes:
    """One message between the ClientApp and the worker: a 4-byte length, that much JSON, then raw bytes. No
    pickle: a peer can send data, never code."""
    head = json.dumps(meta).encode()
    return len(head).to_bytes(4, "big") + head + blob


def unpack(frame: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(frame[:4], "big")
    return json.loads(frame[4 : 4 + n]), frame[4 + n :]


def _paths(node_config: dict[str, Any], node_id: int) -> tuple[str, Path, Path]:
    folder = worker_dir(node_config)
    stem = f"w{node_id % 10**12}"  # short: Unix socket paths are limited to about 100 characters
    return str(folder / f"{stem}.sock"), folder / f"{stem}.key", folder / f"{stem}.log"


def _start(address: str, keyfile: Path, logfile: Path) -> None:
    keyfile.unlink(missing_ok=True)
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    if os.path.exists(address):
        os.unlink(address)
    with open(logfile, "ab") as log:
        # its own session: the worker outlives this ClientApp process, and watches the SuperNode side (our parent)
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedmm.runtime.flower.worker",
                "--address",
                address,
                "--keyfile",
                str(keyfile),
                "--watch-pid",
                str(os.getppid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _connect(address: str, keyfile: Path):
    return Client(address, family="AF_UNIX", authkey=keyfile.read_bytes())


def call_worker(node_config: dict[str, Any], node_id: int, payload: bytes, request: dict[str, Any]) -> bytes:
    """`remote.answer` in this SuperNode's worker, started on first use; the worker's refusal is raised here as a
    `SiteRefusal` (its traceback, if any, is in the worker's log), which the ClientApp sends as its reply."""
    address, keyfile, logfile = _paths(node_config, node_id)
    try:
        conn = _connect(address, keyfile)
    except (FileNotFoundError, ConnectionRefusedError):
        _start(address, keyfile, logfile)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                conn = _connect(address, keyfile)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the fedmm worker did not start within {START_TIMEOUT:g}s; see {logfile}"
                    ) from None
                time.sleep(0.1)
    with conn:
        conn.send_bytes(pack({"node_config": dict(node_config), "request": request}, payload))
        reply, update = unpack(conn.recv_bytes())
    if reply.get("status") != "ok":
        raise SiteRefusal.from_wire(reply)
    return update


def _watch(pid: int, idle: float, last: list[float]) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        if time.monotonic() - last[0] > idle:
            os._exit(0)


def serve(address: str, keyfile: Path, watch_pid: int, idle: float) -> None:
    from fedmm.runtime.remote import answer  # imported once: torch, the model and the data stay loaded

    last = [time.monotonic()]
    threading.Thread(target=_watch, args=(watch_pid, idle, last), daemon=True).start()
    with Listener(address, family="AF_UNIX", authkey=keyfile.read_bytes()) as listener:
        os.chmod(address, 0o600)
        print(f"fedmm worker {os.getpid()} listening on {address}", flush=True)
        while True:
            with listener.accept() as conn:
                try:
                    meta, payload = unpack(conn.recv_bytes())
                    conn.send_bytes(pack({"status": "ok"}, answer(meta["node_config"], payload, meta["request"])))
                except SiteRefusal as e:  # what may go back to the server: a code and fedmm's message
                    conn.send_bytes(pack({"status": "error", **e.to_wire()}))
                except Exception:  # noqa: BLE001 - a frame this worker cannot read; the traceback stays in its log
                    traceback.print_exc()
                    conn.send_bytes(pack({"status": "error", "code": "bad_request", "message": "unreadable request"}))
                last[0] = time.monotonic()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True)
    p.add_argument("--keyfile", required=True, type=Path)
    p.add_argument("--watch-pid", required=True, type=int)
    args = p.parse_args()
    serve(args.address, args.keyfile, args.watch_pid, float(os.environ.get("FEDMM_WORKER_IDLE", "3600")))


if __name__ == "__main__":
    main()
