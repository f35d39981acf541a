"""Local test systems (a Flower deployment, an NVFlare POC system) on 127.0.0.1: free ports, and stopping every
process they started by its id, the ones their launchers detach included. A system marks its processes with an
environment variable they all inherit (Flower's FLWR_HOME, NVFlare's POC workspace), which /proc shows (Linux)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(pid: int) -> None:
    """SIGKILL the process group that `pid` leads (a session started with start_new_session), else the process."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


def kill_session(proc: subprocess.Popen) -> None:
    kill_group(proc.pid)
    proc.wait(timeout=30)


def marked(key: str, value: str) -> list[int]:
    """Ids of live processes (zombies aside) whose environment has key=value, this one excepted."""
    mark = f"{key}={value}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if mark not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry.name}/stat") as f:
                if f.read().split(") ", 1)[1][0] != "Z":
                    pids.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return pids


def stop_marked(key: str, value: str, grace: float = 10.0) -> None:
    """Give the marked processes `grace` seconds to exit on their own, then kill what is left."""
    deadline = time.monotonic() + grace
    while (left := marked(key, value)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        kill_group(pid)


class LocalSystem:
    """A local test system as a context manager: `start()` on entry, `stop()` on exit, and never a half-started
    system left running when `start()` fails."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
