"""Launchers for the jobs of a sweep: `launcher=local launcher.jobs=N` runs N at once on this machine, each in its
own `fedmm` process; `launcher=slurm` submits each as a Slurm job through submitit (or, with
`launcher.cluster=local`, through submitit's local executor: the same submission path without a cluster).

Every job is the command line a user would type (`python -m fedmm.cli run ... output_dir=SWEEP/JOB`), so a job
behaves the same whichever launcher ran it, and its output goes to `SWEEP/logs/JOB.log` (Slurm: submitit's folder
too). fedmm's sites and plugins must be importable where the jobs run: on a cluster, a shared file system holding
the same environment (its Python is the one that submits).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from fedmm.config.schema import LauncherConfig
from fedmm.console import say
from fedmm.errors import FedmmError

Job = dict[str, Any]  # one entry of sweep.json: job, overrides, varying, status, seconds
Update = Callable[[], None]  # rewrites sweep.json


def job_command(command: str, overrides: list[str], out: Path, threads: int = 0) -> list[str]:
    """The command line of one job (the launcher's own options left out); `threads` > 0 is added unless the job
    sets `threads` itself."""
    own = [o for o in overrides if not o.lstrip("+~").startswith("launcher")]
    extra = [f"threads={threads}"] if threads and not any(o.startswith("threads=") for o in own) else []
    return [sys.executable, "-m", "fedmm.cli", command, *own, *extra, "progress=false", f"output_dir={out.resolve()}"]


def failure(text: str) -> str:
    """fedmm's one line (`error: ...`) in a failed job's output, also where a launcher quotes it after its own
    prefix (submitit: `...FailedJobError: error: ...`); else the output's last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [m.group(1) for line in lines for m in [re.search(r"(?:^|\s)error: (.+)$", line)] if m]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def run_local_parallel(command: str, jobs: list[Job], root: Path, cfg: LauncherConfig, update: Update) -> int:
    """`cfg.jobs` jobs at once, each a `fedmm` process; torch's CPU threads are divided between them."""
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    (root / "logs").mkdir(exist_ok=True)
    lock = threading.Lock()

    def one(info: Job) -> bool:
        log = root / "logs" / f"{info['job']}.log"
        with lock:
            info["status"] = "running"
            update()
        t0 = time.perf_counter()
        with open(log, "w") as f:
            cmd = job_command(command, info["overrides"], root / info["job"], threads)
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        with lock:
            info["seconds"] = round(time.perf_counter() - t0, 1)
            info["status"] = "done" if rc == 0 else f"failed: {failure(log.read_text())}"
            update()
            say(f"job {info['job']}: {info['status']} ({info['seconds']:.0f}s; log: {log})")
        return rc == 0

    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        return sum(not ok for ok in pool.map(one, jobs))


def run_submitit(command: str, jobs: list[Job], root: Path, cfg: LauncherConfig, update: Update) -> int:
    """Every job submitted at once (a Slurm job array), then followed until all have ended."""
    try:
        import submitit
    except ImportError:
        raise FedmmError("launcher=slurm needs submitit: pip install 'fedmm[slurm]'") from None
    folder = Path(cfg.folder).expanduser() if cfg.folder else root / ".submitit"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cfg.cluster)
    params: dict[str, Any] = dict(
        name=f"fedmm-{root.name}"[:64],
        timeout_min=cfg.timeout_min,
        cpus_per_task=cfg.cpus_per_job,
        gpus_per_node=cfg.gpus_per_job,
        mem_gb=cfg.mem_gb,
    )
    slurm = {"partition": cfg.partition, "account": cfg.account, "qos": cfg.qos}
    params.update({f"slurm_{k}": v for k, v in slurm.items() if v})
    if cfg.max_parallel:
        params["slurm_array_parallelism"] = cfg.max_parallel
    if cfg.additional:
        params["slurm_additional_parameters"] = dict(cfg.additional)
    executor.update_parameters(**params)
    (root / "logs").mkdir(exist_ok=True)
    functions = [
        submitit.helpers.CommandFunction(
            job_command(command, info["overrides"], root / info["job"]), verbose=False, cwd=os.getcwd()
        )
        for info in jobs
    ]
    with executor.batch():
        submitted = [executor.submit(fn) for fn in functions]
    started = time.perf_counter()
    for info, job in zip(jobs, submitted):
        info["status"], info["launcher_job"] = "submitted", str(job.job_id)
    update()
    pending = dict(enumerate(submitted))
    failed = 0
    while pending:
        time.sleep(1.0)
        for i, job in list(pending.items()):
            if not job.done():
                continue
            del pending[i]
            info = jobs[i]
            info["seconds"] = round(time.perf_counter() - started, 1)
            try:
                output = job.result()
                info["status"] = "done"
            except Exception as e:  # noqa: BLE001 - submitit's FailedJobError (or UncompletedJobError) holds the output
                output = str(e)
                info["status"] = f"failed: {failure(output)}"
                failed += 1
            (root / "logs" / f"{info['job']}.log").write_text(str(output))
            update()
            say(f"job {info['job']} (id {info['launcher_job']}): {info['status']}")
    return failed
