"""Sweep launchers from the shell: several jobs at once on this machine, and submitit's local executor (the Slurm
launcher's submission path without a cluster); a failed job recorded with its one line while the others run."""

import csv
import json
import sys
from pathlib import Path

from conftest import TINY, fedmm, metrics
from fedmm.launch import failure, job_command

SWEEP = [*TINY, "num_clients=2", "rounds=1", "partition=dirichlet"]
TOO_BIG = "cannot give 2 clients at least 500 each"  # partition.min_size=500 fails when the data is partitioned


def rows(sweep: Path) -> dict[str, dict]:
    with open(sweep / "summary.csv") as f:
        return {r["job"]: r for r in csv.DictReader(f)}


def test_job_commands_and_failure_lines():
    cmd = job_command("run", ["seed=1", "launcher=slurm", "launcher.jobs=2"], Path("/s/j"), threads=3)
    assert cmd[:4] == [sys.executable, "-m", "fedmm.cli", "run"]
    assert cmd[4:] == ["seed=1", "threads=3", "progress=false", "output_dir=/s/j"]  # no launcher options
    assert "threads=3" not in job_command("run", ["threads=1"], Path("/s/j"), threads=3)
    assert failure("loading\nerror: bad value\n") == "bad value"
    assert failure("Traceback\nsubmitit.core.utils.FailedJobError: error: 3 too few\n---\n") == "3 too few"
    assert failure("Killed\n") == "Killed"


def test_four_jobs_two_at_a_time_record_each_outcome(tmp_path):
    sweep = tmp_path / "sw"
    proc = fedmm(
        "run",
        "-m",
        *SWEEP,
        "seed=1,2",
        "partition.min_size=2,500",
        "launcher.jobs=2",
        f"output_dir={sweep}",
        check=False,
    )
    assert proc.returncode == 1 and "sweep: 4 jobs" in proc.stdout and "2 at a time" in proc.stdout
    assert "error: 2 of 4 sweep jobs failed" in proc.stderr
    table = rows(sweep)
    assert set(table) == {f"seed-{s}_partition.min_size-{m}" for s in (1, 2) for m in (2, 500)}
    for name, row in table.items():
        if name.endswith("-500"):
            assert row["status"].startswith("failed: ") and TOO_BIG in row["status"] and row["rounds"] == "0"
        else:
            assert row["status"] == "done" and row["rounds"] == "1" and float(row["eval_accuracy"]) >= 0
            assert "done in" in (sweep / "logs" / f"{name}.log").read_text()
    # A job run by the launcher computes what the same command computes alone (threads=1: 2 cores, 2 jobs).
    alone = tmp_path / "alone"
    fedmm("run", *SWEEP, "seed=1", "partition.min_size=2", "threads=1", f"output_dir={alone}")
    assert metrics(alone)[-1]["eval_loss"] == metrics(sweep / "seed-1_partition.min_size-2")[-1]["eval_loss"]


def test_submitit_local_executor_runs_a_two_job_sweep(tmp_path):
    sweep = tmp_path / "sw"
    proc = fedmm(
        "run",
        "-m",
        *SWEEP,
        "partition.min_size=2,500",
        "launcher=slurm",
        "launcher.cluster=local",
        "launcher.cpus_per_job=1",
        "launcher.mem_gb=2",
        f"output_dir={sweep}",
        check=False,
    )
    assert proc.returncode == 1 and "through submitit" in proc.stdout
    jobs = {j["job"]: j for j in json.loads((sweep / "sweep.json").read_text())}
    assert all(j["launcher_job"].isdigit() for j in jobs.values())  # submitit's job ids
    assert jobs["partition.min_size-2"]["status"] == "done"
    assert jobs["partition.min_size-500"]["status"].startswith("failed: ") and TOO_BIG in proc.stdout
    assert (sweep / ".submitit" / jobs["partition.min_size-2"]["launcher_job"]).is_dir()
    assert rows(sweep)["partition.min_size-2"]["rounds"] == "1"
    assert metrics(sweep / "partition.min_size-2")[-1]["round"] == 1


def test_slurm_without_sbatch_is_one_line_before_anything_is_written(tmp_path):
    proc = fedmm("run", "-m", *SWEEP, "seed=1,2", "launcher=slurm", f"output_dir={tmp_path / 'sw'}", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: launcher=slurm needs Slurm's sbatch on PATH")
    assert not (tmp_path / "sw").exists()
