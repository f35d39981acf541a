"""Sweeps (`fedmm run -m a=1,2 b=x,y`): one run directory per job, named by the overrides that vary, and a summary of
them all that survives a failed or interrupted job.

`sweep.json` in the sweep folder lists the jobs (their folder, overrides, status and wall time), rewritten as each
starts and ends, so the summary can always be rebuilt from the folder: `summary.csv` (one row per job: its
varying overrides, status, seconds, final evaluation figures and the sites' summaries), `summary.md` (the same
as a table, with `summary.png`, the task's first metric per job). `fedmm report SWEEP_DIR` rewrites them.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from fedmm.config.schema import LauncherConfig
from fedmm.console import say
from fedmm.errors import FedmmError
from fedmm.launch import run_local_parallel, run_submitit
from fedmm.record import eval_metrics
from fedmm.rundir import RunDir

JOBS = "sweep.json"


def varying(combos: list[list[str]]) -> list[str]:
    """The keys whose value differs between the jobs (a key some jobs lack counts), in order of appearance."""
    keys = list(dict.fromkeys(o.partition("=")[0] for c in combos for o in c))

    def value(combo: list[str], key: str):
        return next((o.partition("=")[2] for o in combo if o.partition("=")[0] == key), None)

    return [k for k in keys if len({value(c, k) for c in combos}) > 1]


def job_name(combo: list[str], keys: list[str]) -> str:
    """A folder name from the job's varying overrides: `seed=1 partition=iid` -> `seed-1_partition-iid`."""
    parts = [o.replace("=", "-", 1) for o in combo if o.partition("=")[0] in keys]
    name = re.sub(r"[^A-Za-z0-9._,+-]+", "-", "_".join(parts)).strip("-._")[:120]
    return name or "job"


def run_sweep(
    combos: list[list[str]], root: Path, job: Callable[[Any], Any], load: Callable[[list[str]], Any], command: str
) -> int:
    """Every job (all validated first), a failed one recorded and the others run; then the summary. `job` runs one
    in this process (launcher=local, launcher.jobs=1); other launchers run `fedmm COMMAND` per job (fedmm.launch).
    Returns the number of failed jobs."""
    keys = varying(combos)
    names = [job_name(c, keys) for c in combos]
    names = [n if names.count(n) == 1 else f"{i}-{n}" for i, n in enumerate(names)]  # never two jobs in a folder
    settings = [load(c + [f"output_dir={root / n}"]) for c, n in zip(combos, names)]
    launcher = settings[0].typed("launcher", LauncherConfig)
    if launcher.name == "slurm":
        how = f"on {launcher.cluster} through submitit"
    else:
        how = f"{launcher.jobs} at a time" if launcher.jobs > 1 else "one after another"
    say(f"sweep: {len(combos)} jobs under {root}/, {how}")
    root.mkdir(parents=True, exist_ok=True)
    jobs = [
        {
            "job": n,
            "overrides": c,
            "varying": [o for o in c if o.partition("=")[0] in keys],
            "status": "pending",
            "seconds": None,
        }
        for c, n in zip(combos, names)
    ]

    def update() -> None:
        RunDir(root).write_json(JOBS, jobs)

    update()
    if launcher.name == "slurm":
        failed = run_submitit(command, jobs, root, launcher, update)
    elif launcher.jobs > 1:
        failed = run_local_parallel(command, jobs, root, launcher, update)
    else:
        failed = 0
        for i, (info, s) in enumerate(zip(jobs, settings)):
            say(f"\n[{i + 1}/{len(combos)}] {info['job']}: {' '.join(info['overrides'])}")
            info["status"] = "running"
            update()
            t0 = time.perf_counter()
            try:
                job(s)
                info["status"] = "done"
            except FedmmError as e:
                failed += 1
                info["status"] = f"failed: {e}"
                say(f"job {info['job']} failed: {e}")
            info["seconds"] = round(time.perf_counter() - t0, 1)
            update()
    summary = write_summary(root)
    say(f"\nsweep results ({summary}):")
    for row in read_jobs(root):
        say(
            f"  {row['job']}: {row['status']}"
            + "".join(f", {k}={v:.4f}" for k, v in row.items() if k.startswith("eval_") and isinstance(v, float))
        )
    return failed


def read_jobs(root: Path) -> list[dict[str, Any]]:
    """One row per job of the sweep in `root`: job, its varying overrides, status, seconds, rounds completed, final
    eval figures and client_eval summaries."""
    if not (root / JOBS).is_file():
        raise FedmmError(f"{root} is not a sweep folder (it has no {JOBS}); give a folder written by fedmm run -m")
    rows = []
    for info in json.loads((root / JOBS).read_text()):
        folder = root / info["job"]
        records = RunDir(folder).read_metrics() if (folder / "metrics.jsonl").exists() else []
        final = records[-1] if records else {}
        rows.append(
            {
                "job": info["job"],
                **{o.partition("=")[0]: o.partition("=")[2] for o in info["varying"]},
                "status": info["status"],
                "seconds": info["seconds"],
                "rounds": len(records),
                **{k: final[k] for k in eval_metrics([final])},
                **{k: v for k, v in final.items() if k.startswith("client_eval_") and isinstance(v, float)},
            }
        )
    return rows


def write_summary(root: Path) -> Path:
    """summary.csv, summary.md and summary.png of the sweep in `root`, from its job folders."""
    rows = read_jobs(root)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(root / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)
    lines = [
        f"# Sweep: {root}",
        "",
        f"{len(rows)} jobs; `summary.csv` has the same figures.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(fmt(r.get(c)).replace("|", "/") for c in cols) + " |" for r in rows]
    metric = next((c for c in cols if c.startswith("eval_") and c != "eval_loss"), None)
    if metric and _plot(rows, metric, root / "summary.png"):
        lines += ["", "![summary](summary.png)"]
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    return root / "summary.csv"


def _plot(rows: list[dict[str, Any]], metric: str, path: Path) -> bool:
    done = [r for r in rows if isinstance(r.get(metric), float)]
    if not done:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(done) + 2), 3.5))
    ax.bar(range(len(done)), [r[metric] for r in done])
    ax.set_xticks(range(len(done)), [r["job"] for r in done], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"final {metric} per job")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
