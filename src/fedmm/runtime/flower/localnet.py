"""A real Flower deployment on 127.0.0.1: a SuperLink with TLS and SuperNode authentication, and SuperNodes as
separate processes, each one the machine of one site. The tests and benchmarks use it; it is also a quick way to
try a deployment before spreading it over machines (the README shows the same commands one by one).

Every process is started in its own session and stopped by its process id (the whole session: Flower's
SuperExec and ClientApp children included, and fedmm's warm worker, which watches them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from fedmm.runtime.flower.deploy import write_app, write_certificates
from fedmm.runtime.flower.env import OFFLINE
from fedmm.runtime.processes import LocalSystem, free_port, kill_session, marked, stop_marked

BIN = Path(sys.executable).parent


class LocalDeployment(LocalSystem):
    def __init__(self, root: Path, num_supernodes: int, extra_env: Optional[dict[str, str]] = None):
        self.root = Path(root)
        self.num_supernodes = num_supernodes
        self.port = free_port()
        self.env = dict(
            os.environ,
            **OFFLINE,
            FLWR_HOME=str(self.root / "flwr-home"),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
            **(extra_env or {}),
        )
        self.pki = self.root / "pki"
        self.superlink: Optional[subprocess.Popen] = None
        self.supernodes: dict[int, subprocess.Popen] = {}

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        return subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> "LocalDeployment":
        self.root.mkdir(parents=True, exist_ok=True)
        write_certificates(self.pki, ["127.0.0.1", "localhost"], self.num_supernodes)
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.pki / "ca.crt"}"\n'
        )
        self.superlink = self._spawn(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(self.pki / "ca.crt"),
                "--ssl-certfile",
                str(self.pki / "server.pem"),
                "--ssl-keyfile",
                str(self.pki / "server.key"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )
        self._wait_listening(self.port, 60.0)
        for i in range(self.num_supernodes):
            self.flwr("supernode", "register", str(self.pki / f"supernode-{i}.pub"), "local")
            self.start_supernode(i)
        return self

    def _wait_listening(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.superlink is not None and self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited; see {self.root / 'superlink.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout:g}s")

    def start_supernode(self, i: int, node_config: str = "") -> subprocess.Popen:
        config = (
            f'partition-id={i} worker-dir="{self.root / "workers"}" state-dir="{self.root / "state"}" ' + node_config
        )
        self.supernodes[i] = self._spawn(
            f"supernode-{i}",
            [
                str(BIN / "flower-supernode"),
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--root-certificates",
                str(self.pki / "ca.crt"),
                "--auth-supernode-private-key",
                str(self.pki / f"supernode-{i}.key"),
                "--node-config",
                config.strip(),
                "--port",
                str(free_port()),
            ],
        )
        return self.supernodes[i]

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(BIN / "flwr"), *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def run(self, overrides: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess:
        """`fedmm flower app` + `flwr run --stream`: blocks until the ServerApp finishes; its output is returned."""
        app = self.root / f"app-{len(list(self.root.glob('app-*')))}"
        write_app(app, overrides)
        return self.flwr("run", str(app), "local", "--stream", timeout=timeout)

    def kill_supernode(self, i: int) -> None:
        kill_session(self.supernodes.pop(i))

    def stop(self) -> None:
        for i in list(self.supernodes):
            self.kill_supernode(i)
        if self.superlink is not None:
            kill_session(self.superlink)
            self.superlink = None
        # What Flower detaches (SuperExec, ServerApp, ClientApp processes) and fedmm's warm workers exit when the
        # process they watch is gone, within seconds; anything still carrying this deployment's FLWR_HOME is killed.
        stop_marked("FLWR_HOME", self.env["FLWR_HOME"])

    def leftovers(self) -> list[int]:
        """Ids of live processes started for this deployment."""
        return marked("FLWR_HOME", self.env["FLWR_HOME"])
