"""NVFlare's POC mode on 127.0.0.1: a provisioned project (a server, sites and an admin, with mutual TLS), whose
server and site processes `nvflare poc start` launches. The tests and benchmarks submit exported fedmm jobs to it;
it is also the quickest way to try an exported job before provisioning real machines.

The server is provisioned under the name `localhost`, so NVFlare binds it to the loopback address only. Every
process inherits this system's NVFLARE_POC_WORKSPACE (and a HOME of its own, where NVFlare keeps its CLI config),
which is how `stop()` finds and kills by id whatever `nvflare poc stop` leaves behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fedmm.runtime.processes import LocalSystem, free_port, marked, stop_marked

BIN = Path(sys.executable).parent
PROJECT = "fedmm_poc"
ADMIN = "admin@fedmm.local"


def allow_fedmm(site_dir: Path) -> None:
    """Add fedmm to a site's class_allow_list (local/resources.json), as its admin does once on a provisioned
    system: NVFlare builds only allow-listed components from installed packages."""
    local = site_dir / "local"
    path = local / "resources.json"
    resources = json.loads((path if path.exists() else local / "resources.json.default").read_text())
    allowed = resources.setdefault("class_allow_list", [])
    if "fedmm." not in allowed:
        allowed.append("fedmm.")
    path.write_text(json.dumps(resources, indent=2))


class PocSystem(LocalSystem):
    def __init__(self, root: Path, sites: list[str]):
        self.root = Path(root)
        self.sites = list(sites)
        self.port = free_port()
        self.workspace = self.root / "poc"
        self.env = dict(
            os.environ,
            NVFLARE_POC_WORKSPACE=str(self.workspace),
            HOME=str(self.root / "home"),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )

    @property
    def kit(self) -> Path:
        """The admin's startup kit (what `nvflare job submit --startup-kit` takes)."""
        return self.workspace / PROJECT / "prod_00" / ADMIN

    def site_dir(self, name: str) -> Path:
        return self.workspace / PROJECT / "prod_00" / name

    def nvflare(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(BIN / "nvflare"), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nvflare {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self) -> "PocSystem":
        Path(self.env["HOME"]).mkdir(parents=True, exist_ok=True)
        participants = [
            {"name": "localhost", "type": "server", "org": "fedmm", "fed_learn_port": self.port},
            {"name": ADMIN, "type": "admin", "org": "fedmm", "role": "project_admin"},
        ]
        participants += [{"name": site, "type": "client", "org": "fedmm"} for site in self.sites]
        project = {
            "api_version": 3,
            "name": PROJECT,
            "description": "fedmm POC",
            "participants": participants,
            "builders": [
                {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder"},
                {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
                {"path": "nvflare.lighter.impl.cert.CertBuilder"},
                {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
            ],
        }
        (self.root / "project.yml").write_text(json.dumps(project, indent=2))  # JSON is YAML
        self.nvflare("poc", "prepare", "-i", str(self.root / "project.yml"), "--force")
        allow_fedmm(self.site_dir("localhost"))
        self.nvflare("poc", "start", "--timeout", "120", timeout=240)
        return self

    def submit(self, job: Path) -> str:
        out = self.nvflare("job", "submit", "-j", str(job), "--startup-kit", str(self.kit)).stdout
        found = re.search(r"job_id:\s*(\S+)", out)
        if not found:
            raise RuntimeError(f"no job id in the output of nvflare job submit:\n{out}")
        return found.group(1)

    def wait(self, job_id: str, timeout: float = 600.0) -> str:
        """Block until the job ends; its final state (COMPLETED, FINISHED_EXCEPTION, ...)."""
        proc = subprocess.run(
            [
                str(BIN / "nvflare"),
                "job",
                "wait",
                job_id,
                "--timeout",
                str(int(timeout)),
                "--startup-kit",
                str(self.kit),
            ],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            stdin=subprocess.DEVNULL,
        )
        found = re.search(r"terminal state (\w+)|status: (\w+)", proc.stdout + proc.stderr)
        if not found:
            raise RuntimeError(f"nvflare job wait {job_id} gave no final state:\n{proc.stdout}\n{proc.stderr}")
        return found.group(1) or found.group(2)

    def stop(self) -> None:
        try:
            self.nvflare("poc", "stop", timeout=120)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # whatever is still running is killed below
        stop_marked("NVFLARE_POC_WORKSPACE", str(self.workspace))

    def leftovers(self) -> list[int]:
        return marked("NVFLARE_POC_WORKSPACE", str(self.workspace))
