"""Build an NVFlare job from fedmm settings; run it in the simulator or export it for a provisioned system."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmm.errors import FedmmError

if TYPE_CHECKING:
    from fedmm.config import Settings
    from fedmm.runtime.base import RunResult
    from fedmm.runtime.nvflare import NVFlareRuntimeConfig

CLIENT_SCRIPT = Path(__file__).resolve().parent / "client_script.py"
JOB_NAME = "fedmm"
PARTIAL_MARKER = ".fedmm-export"  # marks OUT.partial as fedmm's own, so that only fedmm's is ever removed


def require_nvflare() -> None:
    from fedmm.runtime.nvflare import NVFLARE_VERSION

    try:
        import nvflare  # noqa: F401
    except ImportError:
        raise FedmmError(
            f"runtime=nvflare needs NVIDIA FLARE: pip install 'fedmm[nvflare]' (nvflare=={NVFLARE_VERSION})"
        ) from None


def build_job(
    settings_yaml: str,
    sites: list[str],
    site_configs: list[dict[str, Any]],
    cfg: "NVFlareRuntimeConfig",
    min_clients: int,
):
    """The FedJob: FedmmController on the server, the client script on each site with its own arguments. The script
    goes into each site's custom/ folder (NVFlare finds it there by name); fedmm itself is installed at the sites."""
    require_nvflare()
    from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
    from nvflare.job_config.api import FedJob

    from fedmm.runtime.nvflare.controller import FedmmController

    job = FedJob(name=JOB_NAME, min_clients=min_clients)
    job.set_app_packages(["fedmm"])  # never copied into the job's custom/ folders
    job.to_server(
        FedmmController(
            config=settings_yaml, sites=sites, round_timeout=cfg.round_timeout, task_check_period=cfg.task_check_period
        )
    )
    job.to_server({"server": {"task_request_interval": cfg.task_request_interval}})
    for i, (site, extra) in enumerate(zip(sites, site_configs)):
        args = [f"--partition-id={i}"] + [f"--{k}={v}" for k, v in extra.items() if v]
        job.to(
            ClientAPIExecutor(
                execution_mode="in_process",
                task_script_path=CLIENT_SCRIPT.name,
                task_script_args=" ".join(args),
                params_exchange_format="numpy",
            ),
            site,
        )
        job.add_file_to(str(CLIENT_SCRIPT), site)
    return job


def _quiet_console(folder: str) -> Path:
    """NVFlare's default logging with warnings and errors only on the console, beside fedmm's round table; the
    workspace's log files keep everything. (A file outside the workspace: the simulator empties that first.)"""
    import copy
    import json

    from nvflare.fuel.utils.log_utils import default_log_dict

    config = copy.deepcopy(default_log_dict)
    config["handlers"]["consoleHandler"]["level"] = "WARNING"
    path = Path(folder) / "log_config.json"
    path.write_text(json.dumps(config))
    return path


def run_simulator(settings: "Settings", cfg: "NVFlareRuntimeConfig") -> "RunResult":
    from fedmm.experiment.assemble import count_clients
    from fedmm.fl.sampling import num_sampled
    from fedmm.runtime.base import RunResult
    from fedmm.runtime.nvflare.controller import ERROR_FILE
    from fedmm.runtime.remote import simulated_sites
    from fedmm.rundir import open_run_dir

    require_nvflare()
    n = count_clients(settings)
    if settings.threads == 0:  # the sites share this machine: a share of its cores each, not all of them each
        settings.cfg.threads = max(1, (os.cpu_count() or 1) // min(cfg.threads or n, n))
    # the controller continues it (config.yaml written, nothing else)
    rundir = open_run_dir(settings.resume, settings.output_dir, "run", settings.to_yaml())
    settings.cfg.output_dir = str(rundir.path.resolve())
    if settings.resume:
        settings.cfg.resume = str(rundir.path.resolve())
    sites = [f"site-{i + 1}" for i in range(n)]
    per_round = num_sampled(n, settings.clients_per_round, settings.client_fraction, settings.min_clients)
    job = build_job(settings.to_yaml(), sites, [{}] * n, cfg=cfg, min_clients=min(settings.min_clients, per_round))
    workspace = Path(cfg.workspace or rundir.path / "nvflare").resolve()
    (rundir.path / ERROR_FILE).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp, simulated_sites(settings, rundir.path):
        job.simulator_run(str(workspace), threads=cfg.threads or n, log_config=str(_quiet_console(tmp)))
    if (rundir.path / ERROR_FILE).exists():
        raise FedmmError((rundir.path / ERROR_FILE).read_text().strip())
    records = rundir.read_metrics()
    if not records or (records[-1].get("round") != settings.rounds and not records[-1].get("early_stop")):
        raise FedmmError(
            f"the NVFlare job ended after {len(records)} of {settings.rounds} rounds; its log is "
            f"{workspace}/server/simulate_job/log.txt (completed rounds are kept: resume={rundir.path})"
        )
    return RunResult(rundir, records[-1])


def export_job(out: str | Path, overrides: list[str], sites: list[str]) -> Path:
    """A job folder for `nvflare job submit`. `sites` are NAME or NAME=DATA_ROOT, client i being the i-th site
    (default site-1..site-K); DATA_ROOT is where that site keeps its data (its `--data-root`)."""
    from fedmm.config import load_settings
    from fedmm.data.tasks import has_sites
    from fedmm.experiment.assemble import count_clients
    from fedmm.runtime.nvflare import NVFlareRuntimeConfig

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FedmmError(f"{out} is not empty; choose a new folder for the job")
    # output_dir and resume are paths on the server's machine, kept as given: the job carries no path of the
    # machine that exported it, and a relative one would land in NVFlare's workspace
    for o in overrides:
        key, _, value = o.partition("=")
        if key in ("output_dir", "resume") and value and not value.startswith(("/", "~")):
            raise FedmmError(
                f"{key}={value} is relative; give the absolute path on the server's machine "
                f"(or one under ~, the server user's home)"
            )
    overrides = [o for o in overrides if not o.startswith("runtime=")]
    if not any(o.startswith("resume=") for o in overrides):  # a resumed run keeps its config
        overrides.append("runtime=nvflare")
    settings = load_settings(overrides)
    if not settings.output_dir and not settings.resume:
        raise FedmmError("give output_dir=<folder on the server's machine> (where the run directory goes)")
    if any("=" in s for s in sites) and not hasattr(settings.task, "root"):
        raise FedmmError(f"task {settings.task.name} reads no data folder; give --site NAME without =DATA_ROOT")
    # a task with per-site folders: they live at the sites, so a --site list is trusted here (the controller checks
    # it when the job starts)
    n = len(sites) if sites and has_sites(settings.task) else count_clients(settings)
    if sites and len(sites) != n:
        raise FedmmError(f"{len(sites)} sites for {n} clients; give one --site per client")
    names = [s.partition("=")[0] for s in sites] or [f"site-{i + 1}" for i in range(n)]
    roots = [{"data-root": s.partition("=")[2]} for s in sites] or [{}] * n
    cfg = settings.runtime if settings.runtime.name == "nvflare" else NVFlareRuntimeConfig()  # resume= of another
    job = build_job(settings.to_yaml(), names, roots, cfg=cfg, min_clients=settings.min_clients)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():  # left by an export that stopped half-way: only fedmm's own is removed
        if not (tmp / PARTIAL_MARKER).exists():
            raise FedmmError(f"{tmp} exists and was not made by fedmm; move it away, or choose another OUT")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / PARTIAL_MARKER).touch()
    job.export_job(str(tmp))
    out.mkdir(parents=True, exist_ok=True)
    for child in (tmp / JOB_NAME).iterdir():
        os.replace(child, out / child.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return out
