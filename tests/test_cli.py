"""The command line as a user meets it: clear one-line errors, real runs, sweeps, resume, the baseline."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import HANG, TINY, fedmm, metrics, untrained
from fedmm.config import expand_sweeps
from fedmm.errors import FedmmError


def test_a_mapping_option_takes_new_keys_on_the_command_line():
    """Free-form mappings (model.text_config, model.vision_config) accept `key={a:1}` like any other value, while an
    unknown option is still refused."""
    from fedmm.config import load_settings

    s = load_settings(["model=blip_vqa", "model.text_config={hidden_size:2048,num_hidden_layers:24}"])
    assert s.model.text_config == {"hidden_size": 2048, "num_hidden_layers": 24}
    # over a preset's mapping (januspro's 1B shapes) the given keys replace its values and the others stay
    s = load_settings(["model=januspro", "model.text_config={num_hidden_layers:2}"])
    assert s.model.text_config["num_hidden_layers"] == 2 and s.model.text_config["hidden_size"] == 2048
    with pytest.raises(FedmmError, match="unknown option 'model.nosuch'"):
        load_settings(["model=januspro", "model.nosuch={a:1}"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["nosuchkey=1"], "unknown option 'nosuchkey'"),
        (["rounds=abc"], "rounds"),
        (
            ["model=nosuchmodel"],
            "unknown model 'nosuchmodel'; choose one of: blip_vqa, blip_vqa_tiny, fusion, fusion_minilm, "
            "fusion_mobilenet, fusion_tiny, hf_vlm, hf_vlm_tiny, januspro, januspro_tiny",
        ),
        (["model.nosuch=3"], "unknown option 'model.nosuch'"),
        (["+model.nosuch=3"], "unknown option 'model.nosuch'"),
        (["model.fusion_dim=big"], "model.fusion_dim"),
        (["task=easyvqa", "task.root=/no/such/folder", "model=fusion_tiny"], "/no/such/folder"),
        (["resume=/no/such/run"], "/no/such/run/config.yaml not found"),
        (["seed=1,2"], "add -m"),
        (["partition.alpha=0"], "partition.alpha=0.0 is out of range: it must be a finite number > 0"),
        (["lr_schedule=linear"], "lr_schedule must be one of constant, cosine"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, expected):
    base = [] if any(a.startswith("task=") for a in args) else TINY
    proc = fedmm("run", *base, f"output_dir={tmp_path}/out", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err, err


def test_existing_run_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    fedmm("run", *TINY, "rounds=1", f"output_dir={out}")
    before = (out / "metrics.jsonl").read_text()
    proc = fedmm("run", *TINY, "rounds=1", f"output_dir={out}", check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (out / "metrics.jsonl").read_text() == before


def test_acceptance_run_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = fedmm(
        "run",
        "task=synthetic",
        "model=fusion_tiny",
        "num_clients=8",
        "partition=dirichlet",
        "partition.alpha=0.1",
        "rounds=2",
        "modality.text_only=[1]",
        "modality.image_only=[2]",
        f"output_dir={out}",
    )
    assert "outputs:" in proc.stdout and str(out) in proc.stdout
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "partition.json",
        "global.safetensors",
        "report.md",
        "metrics.png",
        "checkpoints/round_0002/global.safetensors",
        "checkpoints/round_0002/strategy.safetensors",
        "checkpoints/round_0002/state.json",
    ):
        assert (out / name).exists(), name
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        for key in ("num_clients", "train_loss", "bytes_up", "bytes_down", "seconds", "eval_accuracy", "eval_loss"):
            assert key in r, key
        assert r["num_clients"] == 8 and r["bytes_up"] > 0 and r["bytes_down"] > 0
    # Two rounds over a Dirichlet(0.1) split of 12 classes barely move the accuracy, but the model learns: the test
    # loss falls below the untrained model's (measured 2.61 -> 2.46).
    args = ["task=synthetic", "model=fusion_tiny", "num_clients=8", "partition=dirichlet", "partition.alpha=0.1"]
    assert records[-1]["eval_loss"] < untrained(args, tmp_path)["loss"] - 0.1
    # A text-only and an image-only client send fewer bytes than they receive: only their modality's tensors.
    part = json.loads((out / "partition.json").read_text())
    assert [p["modalities"] for p in part[:3]] == [["image", "text"], ["text"], ["image"]]
    # client_eval=final (the default): each client holds out round(0.1 n) of its partition as its own test data
    assert sum(p["num_examples"] + p["test_examples"] for p in part) == 2000
    assert all(p["test_examples"] == round(0.1 * (p["num_examples"] + p["test_examples"])) for p in part)
    assert min(p["num_examples"] for p in part) >= 2
    assert records[0]["bytes_up"] < records[0]["bytes_down"]
    assert "eval_accuracy" in (out / "report.md").read_text()


def test_multirun_sweep_runs_every_combination_and_writes_a_summary(tmp_path):
    sweep = tmp_path / "sw"
    proc = fedmm("run", "-m", *TINY, "rounds=1", "seed=1,2", "partition=iid,dirichlet", f"output_dir={sweep}")
    assert "sweep: 4 jobs" in proc.stdout
    names = ["seed-1_partition-iid", "seed-1_partition-dirichlet", "seed-2_partition-iid", "seed-2_partition-dirichlet"]
    for name in names:
        assert (sweep / name / "metrics.jsonl").exists()
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["job"] for r in rows) == sorted(names)
    for r in rows:  # the summary's figures are each job's own final record
        final = metrics(sweep / r["job"])[-1]
        assert r["status"] == "done" and float(r["eval_accuracy"]) == final["eval_accuracy"]
        assert float(r["client_eval_accuracy_min"]) == final["client_eval_accuracy_min"]  # the worst site, per job
        assert r["job"] == f"seed-{r['seed']}_partition-{r['partition']}" and float(r["seconds"]) > 0
    assert (sweep / "summary.png").exists() and "| job |" in (sweep / "summary.md").read_text()
    (sweep / "summary.csv").unlink()
    assert fedmm("report", str(sweep)).stdout.strip() == str(sweep / "summary.csv") and (sweep / "summary.csv").exists()


def test_a_failed_sweep_job_is_recorded_and_the_others_run(tmp_path):
    """Job 2 cannot meet min_clients (its only client fails validation): it is recorded as failed, job 1 and 3 run,
    and the sweep exits 1 with one line."""
    sweep = tmp_path / "sw"
    proc = fedmm(
        "run",
        "-m",
        *TINY,
        "rounds=1",
        "num_clients=2",
        "attack=none,nan,none",
        "attack.clients=[0,1]",
        "seed=1,2",
        f"output_dir={sweep}",
        check=False,
    )
    with open(sweep / "summary.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert proc.returncode == 1 and "2 of 6 sweep jobs failed" in proc.stderr
    failed = [j for j, r in rows.items() if r["status"].startswith("failed: round 1: only 0 of 2")]
    assert sorted(failed) == ["attack-nan_seed-1", "attack-nan_seed-2"] and len(rows) == 6
    assert expand_sweeps(["a=1,2", "b=x,y", "c=3"]) == [
        ["a=1", "b=x", "c=3"],
        ["a=1", "b=y", "c=3"],
        ["a=2", "b=x", "c=3"],
        ["a=2", "b=y", "c=3"],
    ]


def kill_and_resume(tmp_path, args):
    """Run `args` once uninterrupted; run it again, SIGKILL it once round 2 is checkpointed, resume it; return both
    run directories after checking that their final global models are identical."""
    full = tmp_path / "full"
    fedmm("run", *args, f"output_dir={full}")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmm.cli", "run", *args, f"output_dir={killed}"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + HANG
        while not (killed / "checkpoints" / "round_0002").exists():
            assert proc.poll() is None and time.time() < deadline, "run ended before round 2 was checkpointed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("round_")]
    assert "round_0004" not in done
    out = fedmm("run", f"resume={killed}")
    assert "resuming" in out.stdout
    a, b = load_file(str(full / "global.safetensors")), load_file(str(killed / "global.safetensors"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    rounds = [json.loads(l)["round"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]
    return full, killed


def test_killed_run_resumes_to_the_same_global_model(tmp_path):
    full, killed = kill_and_resume(
        tmp_path,
        [*TINY, "rounds=4", "num_clients=3", "clients_per_round=2", "modality.text_only=[0]", "select_best=main"],
    )
    # select_best: the same best round, validation figures and best.safetensors after the SIGKILL and resume
    a, b = metrics(full), metrics(killed)
    assert [(r["best_round"], r["val_accuracy"]) for r in a] == [(r["best_round"], r["val_accuracy"]) for r in b]
    assert (full / "best.safetensors").read_bytes() == (killed / "best.safetensors").read_bytes()
    # Settings that change the experiment cannot change on resume; extending a finished run continues it.
    bad = fedmm("run", f"resume={full}", "partition.alpha=9", check=False)
    assert bad.returncode == 2 and "cannot change when resuming" in bad.stderr
    fedmm("run", f"resume={full}", "rounds=5")
    assert len((full / "metrics.jsonl").read_text().splitlines()) == 5


def test_centralized_baseline(tmp_path):
    out = tmp_path / "central"
    proc = fedmm("centralized", *TINY, "rounds=2", "local_epochs=1", f"output_dir={out}")
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all("eval_accuracy" in r and "round" not in r for r in records)
    # Two epochs over the pooled data learn (measured: accuracy 0.08 -> 0.32, loss 2.58 -> 1.39).
    base = untrained(TINY, tmp_path)
    assert records[-1]["eval_accuracy"] > base["accuracy"] + 0.15 and records[-1]["eval_loss"] < base["loss"] - 0.5
    assert records[0]["num_examples"] == 600
    assert (out / "global.safetensors").exists() and (out / "report.md").exists()
    assert "outputs:" in proc.stdout


def test_config_command_prints_composed_config():
    proc = fedmm("config", "model=fusion_tiny", "rounds=7")
    assert "rounds: 7" in proc.stdout and "tokenizer: tiny" in proc.stdout


def test_each_subcommand_has_its_own_help_a_version_and_quiet(tmp_path):
    out = fedmm("run", "--help").stdout
    assert out.startswith("usage: fedmm run [-h] [-m] [-q] [overrides ...]") and "federated training" in out
    assert "fedmm centralized" not in out and "groups are chosen with group=option" in out
    assert fedmm("flower", "app", "--help").stdout.startswith("usage: fedmm flower app")
    assert fedmm("report", "--help").stdout.startswith("usage: fedmm report")
    from fedmm import __version__

    assert fedmm("--version").stdout.strip() == f"fedmm {__version__}"
    quiet = fedmm("-q", "run", *TINY, "rounds=1", f"output_dir={tmp_path / 'q'}")
    assert quiet.stdout == "" and quiet.stderr == "" and (tmp_path / "q" / "metrics.jsonl").exists()
    between = fedmm("run", *TINY, "rounds=1", "-q", f"output_dir={tmp_path / 'q2'}")  # -q among the overrides
    assert between.stdout == "" and (tmp_path / "q2" / "metrics.jsonl").exists()


def test_the_default_jobs_modality_masks_stay_with_its_task(tmp_path):
    from fedmm.config import load_settings

    assert load_settings([]).modality.text_only == [2]  # the default job: easy-VQA, client 2 text-only
    s = load_settings(["task=synthetic", "model=fusion_tiny", "num_clients=2"])
    assert list(s.modality.text_only) == [] and list(s.modality.image_only) == []
    proc = fedmm("run", "num_clients=2", "rounds=1", f"output_dir={tmp_path / 'x'}", check=False)
    assert proc.returncode == 2 and "clear it with modality.text_only=[] modality.image_only=[]" in proc.stderr


def test_every_option_has_a_description_and_config_help_lists_them():
    from dataclasses import fields, is_dataclass

    from fedmm.config.load import RUN_GROUPS, Schema
    from fedmm.options import description
    from fedmm.registry import BACKENDS, RUNTIMES, STRATEGIES, TASKS

    classes = {Schema, *RUN_GROUPS.values()} | {
        f.default_factory for f in fields(Schema) if isinstance(f.default_factory, type)
    }
    for registry in (TASKS, BACKENDS, STRATEGIES, RUNTIMES):
        classes |= {registry.get(n).config_cls for n in registry.names()}
    classes = {c for c in classes if c.__module__.startswith("fedmm.")}  # not what other tests registered
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in classes
        for f in fields(cls)
        if not description(f)
        and f.name not in ("task", "model", "strategy", "runtime")
        and not (isinstance(f.default_factory, type) and is_dataclass(f.default_factory))
    ]
    assert not missing
    out = fedmm("config", "--help", "model=blip_vqa_tiny", "strategy=fedprox").stdout
    assert out.startswith("usage: fedmm config")
    assert "  model.lora_r=4" in out and "LoRA rank" in out  # the chosen option's own fields
    assert "  strategy.mu=" in out and "rounds=60" in out and "federated rounds" in out
    lines = [line for line in out.splitlines() if "=" in line.split(" ")[0] or line.startswith("  ")]
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # every option line has its description


def test_config_and_help_never_import_torch():
    """What keeps `fedmm config` and `--help` fast (about 0.6 s instead of 2.5 s): the options of the backends and
    strategies whose code needs torch live in torch-free modules, and their code loads when a run builds them."""
    code = (
        "import sys, io, contextlib; from fedmm import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['config', 'model=blip_vqa_tiny', 'strategy=fedmap']) == 0\n"
        "    assert cli.main(['config', '--help']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'flwr', 'nvflare') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unreachable_hub_is_noticed_once_and_hub_ids_come_from_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))  # a closed port: refused at once
    proc = subprocess.run(
        [sys.executable, "-m", "fedmm.cli", "info", "model=blip_vqa"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("127.0.0.1 is not reachable; hub ids are read from the local Hugging Face cache only") == 1
    assert "Salesforce/blip-vqa-base is not on disk" in proc.stdout
