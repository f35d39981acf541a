"""fedmm's benchmark suite: what a federated run costs beyond the training itself, how few bytes travel, and how far
one process scales. Every figure is produced here, by the command that the report names.

    python3 dev.py bench suite              # writes docs/BENCHMARKS.md and docs/benchmarks/suite.json
    python3 dev.py bench suite --quick      # one repeat, smaller runs (a smoke test of the suite itself)
    python3 dev.py bench suite --only runtimes  # re-run sections (comma-separated), keep the others' saved figures
    python3 dev.py bench suite --render     # docs/BENCHMARKS.md again from suite.json (no runs)

Each run is its own `fedmm` process (wall time, start-up and peak memory are the process's). Runs that are compared
alternate within one repeat, so that drifts in the host's speed hit both sides alike; figures are medians over the
repeats. Run directories go to benchmarks/results/suite/ (not committed).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable
from datetime import date
from pathlib import Path

from fedmm.rundir import RunDir  # the benchmarks read runs as fedmm writes them

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "suite"
QUICK = "--quick" in sys.argv
ONLY = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
REPEATS = 1 if QUICK else 3

# The overhead job: tiny fusion on synthetic data, a fixed number of samples, 5 rounds of 1 local epoch, against
# the centralized baseline doing the same sample-steps (5 epochs over the union of the clients' data).
WORK = [
    "task=synthetic",
    "model=fusion_tiny",
    "task.num_train=4000",
    "task.num_val=200",
    "task.num_test=1000",
    "modality.text_only=[]",
    "modality.image_only=[]",
    "batch_size=32",
    "lr=0.003",
    "lr_schedule=constant",
    "progress=false",
    "threads=2",
]
ROUNDS = 5
SCALE_K = (10, 100) if QUICK else (10, 100, 500)
# Many clients, few per round: 10,000 clients (2 examples each), 100 sampled per round.
SCALE_MANY = {"clients": 10_000, "args": ["task.num_train=20000", "clients_per_round=100"]}
# The compression job: tiny BLIP learning generative easy-VQA (the README's documented run).
BLIP = ["experiment=blip_tiny_easyvqa", "progress=false", "threads=2"]
BLIP_SIZE = ["max_train_samples=2000", "max_eval_samples=300", "rounds=4"] if QUICK else []
# The feature-cache job: both encoders frozen, easy-VQA; the default job's shapes (MiniLM + small ResNet) and
# bert-base + ResNet-18 shapes (random init: the weights do not matter for time) at 64x64 pixels.
CACHE = [
    "task=easyvqa",
    "model.freeze_text=true",
    "model.freeze_image=true",
    "num_clients=2",
    "rounds=3",
    "modality.text_only=[]",
    "modality.image_only=[]",
    "max_eval_samples=500",
    "progress=false",
    "threads=2",
]
CACHE_MODELS = {
    "fusion_minilm": ["model=fusion_minilm", "max_train_samples=4000"],
    "fusion (bert-base + ResNet-18 shapes)": [
        "model=fusion",
        "model.text_encoder=''",
        "model.image_encoder=''",
        "model.tokenizer=tiny",
        "model.image_size=64",
        "max_train_samples=1000" if not QUICK else "max_train_samples=200",
    ],
}
# Federated vs centralized at K=8, Dirichlet alpha=0.5, the same sample-epochs, every client with both modalities.
QUALITY = [
    "num_clients=8",
    "partition=dirichlet",
    "partition.alpha=0.5",
    "modality.text_only=[]",
    "modality.image_only=[]",
    "progress=false",
    "threads=2",
]
MOBILENET = ["model=fusion_mobilenet", "lr=0.01", "lr_schedule=constant", "max_train_samples=6000"]
QUALITY_JOBS = {
    "fusion_mobilenet (the default job's model; 120 rounds, constant lr 0.01)": [*MOBILENET, "rounds=120"]
    if not QUICK
    else [*MOBILENET, "rounds=4"],
    "fusion_minilm (the previous default model)": ["model=fusion_minilm", "rounds=12", "max_train_samples=6000"]
    if not QUICK
    else ["model=fusion_minilm", "rounds=2", "max_train_samples=1000"],
    # lr 0.003 for both arms: at the preset's 0.01 the centralized run (3,000 sequential steps) does not learn
    # (VQA accuracy 0.345, the federated one 0.666), which would make the ratio meaningless
    "blip_vqa_tiny (experiment=blip_tiny_easyvqa lr=0.003)": ["experiment=blip_tiny_easyvqa", "lr=0.003", *BLIP_SIZE],
}


def fedmm(command: str, args: list[str], name: str, client_eval: bool = False) -> dict:
    """One `fedmm` process: its wall time, peak resident memory and metrics.jsonl records. A federated run trains
    each client on its whole share (`client_eval=none`: the same sample-epochs as the centralized baseline) unless
    `client_eval` (the default job, as a user runs it)."""
    if command == "run" and not client_eval:
        args = [*args, "client_eval=none"]
    run_dir = OUT / name
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmm.cli", command, *args, f"output_dir={run_dir}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"fedmm {command} {' '.join(args)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    records = RunDir(run_dir).read_metrics()  # fedmm.record defines the columns read below
    return {"wall": wall, "peak_mb": usage.ru_maxrss / 1024, "records": records}


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def overhead() -> list[dict]:
    rows = []
    for k in (2, 8):
        fed_runs, central_runs = [], []
        for rep in range(REPEATS):  # side by side: federated, then centralized, in each repeat
            fed_runs.append(
                fedmm(
                    "run", [*WORK, f"num_clients={k}", f"rounds={ROUNDS}", "partition=iid"], f"overhead-k{k}-fed-{rep}"
                )
            )
            central_runs.append(
                fedmm("centralized", [*WORK, f"num_clients={k}", f"epochs={ROUNDS}"], f"overhead-k{k}-central-{rep}")
            )
        fed_startup = [r["wall"] - sum(x["seconds"] for x in r["records"]) for r in fed_runs]
        central_startup = [r["wall"] - sum(x["seconds"] for x in r["records"]) for r in central_runs]
        per_round = [(f["wall"] - c["wall"]) / ROUNDS for f, c in zip(fed_runs, central_runs)]
        rows.append(
            {
                "clients": k,
                "rounds": ROUNDS,
                "federated_wall_s": median([r["wall"] for r in fed_runs]),
                "centralized_wall_s": median([r["wall"] for r in central_runs]),
                "ratio": median([f["wall"] / c["wall"] for f, c in zip(fed_runs, central_runs)]),
                "federated_startup_s": median(fed_startup),
                "centralized_startup_s": median(central_startup),
                "per_round_overhead_s": median(per_round),
                # The federated machinery alone: a round's time less client training and server evaluation
                # (serialising, sending, decoding and aggregating updates).
                "machinery_per_round_s": median(
                    [
                        median([x["seconds"] - x["client_seconds"] - x["eval_seconds"] for x in r["records"]])
                        for r in fed_runs
                    ]
                ),
                "client_training_share": median(
                    [
                        sum(x["client_seconds"] for x in r["records"]) / sum(x["seconds"] for x in r["records"])
                        for r in fed_runs
                    ]
                ),
                "federated_accuracy": median([r["records"][-1]["eval_accuracy"] for r in fed_runs]),
                "centralized_accuracy": median([r["records"][-1]["eval_accuracy"] for r in central_runs]),
            }
        )
    return rows


def communication() -> list[dict]:
    """Bytes per client per round, counted on the meta device (no weights needed)."""
    from fedmm.backends import BACKENDS
    from fedmm.config import load_settings

    rows = []
    for preset in ("blip_vqa", "januspro"):
        s = load_settings([f"model={preset}", "task=easyvqa_gen"])
        backend = BACKENDS.get(s.model.name).factory(s.model, 13, False)
        model = backend.meta_model()
        base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
        lora = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
        b_only = sum(v for n, v in lora.items() if ".lora_B." in n)
        n_lora = sum(lora.values())
        variants = {
            "full fine-tuning (fp32)": 4 * base,
            "LoRA, the seed's targets (fp32)": 4 * n_lora,
            "ffa_lora (B only, fp32)": 4 * b_only,
            "LoRA + compression.kind=fp16": 2 * n_lora,
            "LoRA + compression.kind=int8_block (256)": n_lora + 4 * -(-n_lora // 256),
            "ffa_lora + compression.kind=int8_block (256)": b_only + 4 * -(-b_only // 256),
        }
        for name, nbytes in variants.items():
            rows.append(
                {
                    "model": preset,
                    "shapes": backend.sized_from or "the checkpoint's config",
                    "variant": name,
                    "bytes_up": nbytes,
                    "reduction_vs_full": 1 - nbytes / (4 * base),
                }
            )
    return rows


def compression_quality() -> list[dict]:
    rows = []
    for kind in ("none", "fp16", "bf16", "int8", "int8_block"):
        r = fedmm("run", [*BLIP, *BLIP_SIZE, f"compression.kind={kind}"], f"compression-{kind}")
        last = r["records"][-1]
        rows.append(
            {
                "kind": kind,
                "eval_vqa_accuracy": last["eval_vqa_accuracy"],
                "bytes_up_per_round": median([x["bytes_up"] for x in r["records"]]),
                "wall_s": r["wall"],
            }
        )
    return rows


def feature_cache() -> list[dict]:
    rows = []
    for i, (name, args) in enumerate(CACHE_MODELS.items()):
        runs = {}
        for cache in ("true", "false"):
            runs[cache] = fedmm("run", [*CACHE, *args, f"model.cache_features={cache}"], f"cache-{i}-{cache}")
        later = {c: median([x["client_seconds"] for x in r["records"][1:]]) for c, r in runs.items()}
        rows.append(
            {
                "model": name,
                "first_round_cached_s": runs["true"]["records"][0]["seconds"],
                "round_cached_s": median([x["seconds"] for x in runs["true"]["records"][1:]]),
                "round_uncached_s": median([x["seconds"] for x in runs["false"]["records"][1:]]),
                "training_cached_s": later["true"],
                "training_uncached_s": later["false"],
                "speedup": later["false"] / later["true"],
                "same_accuracy": runs["true"]["records"][-1]["eval_accuracy"]
                == runs["false"]["records"][-1]["eval_accuracy"],
            }
        )
    return rows


def quality() -> list[dict]:
    rows = []
    for i, (name, args) in enumerate(QUALITY_JOBS.items()):
        fed = fedmm("run", [*QUALITY, *args], f"quality-{i}-fed")
        central = fedmm("centralized", [*QUALITY, *args], f"quality-{i}-central")
        metric = next(k for k in fed["records"][-1] if k in ("eval_accuracy", "eval_vqa_accuracy"))
        f, c = fed["records"][-1][metric], central["records"][-1][metric]
        rows.append(
            {
                "model": name,
                "metric": metric[5:],
                "federated": f,
                "centralized": c,
                "ratio": f / c,
                "federated_s": fed["wall"],
                "centralized_s": central["wall"],
            }
        )
    return rows


# What was tried to bring the default model's federated quality to centralized (the quality job's setting, K=8,
# Dirichlet alpha 0.5, 6,000 questions); each federated arm against `fedmm centralized` with the same settings.
LEVERS = {
    "the old run defaults: 24 rounds, cosine lr 0.003": ["rounds=24", "lr=0.003", "lr_schedule=cosine"],
    "60 rounds, cosine lr 0.01": ["rounds=60", "lr_schedule=cosine"],
    "60 rounds, constant lr 0.01": ["rounds=60"],
    "120 rounds, constant lr 0.01 (kept)": ["rounds=120"],
    "60 rounds, FedAvgM (server momentum 0.9)": ["rounds=60", "strategy=fedavgm"],
    "60 rounds, FedAvgM (server momentum 0.5)": ["rounds=60", "strategy=fedavgm", "strategy.momentum=0.5"],
    "60 rounds, FedAdam (server lr 0.01)": ["rounds=60", "strategy=fedadam"],
    "60 rounds, FedProx (mu 0.1)": ["rounds=60", "strategy=fedprox", "strategy.mu=0.1"],
    "30 rounds x 2 local epochs": ["rounds=30", "local_epochs=2"],
    "60 rounds, batch 256": ["rounds=60", "batch_size=256"],
    "60 rounds, SGD clients (momentum 0.9, lr 0.03)": ["rounds=60", "optimizer=sgd", "lr=0.03"],
}


def levers() -> list[dict]:
    rows = []
    for i, (name, args) in enumerate(LEVERS.items()):
        job = [*QUALITY, *MOBILENET, *args]
        f = fedmm("run", job, f"lever-{i}-fed")["records"][-1]["eval_accuracy"]
        c = fedmm("centralized", job, f"lever-{i}-central")["records"][-1]["eval_accuracy"]
        rows.append({"lever": name, "federated": f, "centralized": c, "ratio": f / c})
    return rows


def default_job() -> list[dict]:
    """`fedmm run` with no arguments: a first run (an empty feature cache) and a repeat (the cache warm), 3 seeds."""
    rows = []
    for seed in (42, 1, 2):
        cache = OUT / f"default-cache-{seed}"
        shutil.rmtree(cache, ignore_errors=True)
        env = [f"seed={seed}", f"model.cache_dir={cache}"]
        first, repeat = (fedmm("run", env, f"default-{seed}-{i}", client_eval=True) for i in ("first", "repeat"))
        rows.append(
            {
                "seed": seed,
                "accuracy": first["records"][-1]["eval_accuracy"],
                "repeat_accuracy": repeat["records"][-1]["eval_accuracy"],
                "first_s": first["wall"],
                "repeat_s": repeat["wall"],
                "peak_mb": first["peak_mb"],
            }
        )
    return rows


def scale() -> list[dict]:
    rows = []
    jobs = [(k, [f"num_clients={k}"]) for k in SCALE_K]
    if not QUICK:
        jobs.append((SCALE_MANY["clients"], [f"num_clients={SCALE_MANY['clients']}", *SCALE_MANY["args"]]))
    for k, args in jobs:
        r = fedmm("run", [*WORK, *args, "rounds=2", "partition=iid", "partition.min_size=1"], f"scale-k{k}")
        rows.append(
            {
                "clients": k,
                "per_round": r["records"][-1]["clients_sampled"],
                "round_s": median([x["seconds"] for x in r["records"]]),
                "peak_mb": r["peak_mb"],
                "wall_s": r["wall"],
            }
        )
    return rows


# One torch thread per client: the distributed runtimes' two clients train at once on the 2 cores (two 2-thread
# processes on 2 cores slow each other down several-fold).
RUNTIME_JOB = [w for w in WORK if not w.startswith("threads=")] + [
    "threads=1",
    "num_clients=2",
    f"rounds={ROUNDS}",
    "partition=iid",
]


def _round_overheads(records: list[dict], sequential: bool) -> list[float]:
    """A round's time less client training (all of it when clients train one after the other, as in the embedded
    runtime; the slowest client's when they train at once) and the server's evaluation: what the runtime adds."""
    training = "client_seconds" if sequential else "client_seconds_max"
    return [x["seconds"] - x[training] - x["eval_seconds"] for x in records]


def _deployed_run(run: Callable[[Path], None], name: str) -> dict:
    """A run on a running deployment: its wall time (from submission to its end) and records."""
    run_dir = OUT / name
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    run(run_dir)
    records = RunDir(run_dir).read_metrics()
    return {"wall": time.perf_counter() - t0, "records": records}


def runtimes() -> list[dict]:
    """The overhead job with K=2 on every runtime, side by side in each repeat: the embedded one; Flower's simulation
    engine and a real SuperLink + 2 SuperNodes on 127.0.0.1 (TLS, SuperNode authentication) with fedmm's warm
    workers; NVFlare's simulator and the exported job on a POC system on 127.0.0.1 (mutual TLS). Two reference rows
    run in the first repeat only (they are slow and only show what fedmm's defaults save): Flower's default
    (`runtime.warm=false`: a fresh ClientApp process builds the model and loads the data for every message) and
    NVFlare's default polling intervals."""
    import tempfile

    from fedmm.runtime.flower.localnet import LocalDeployment
    from fedmm.runtime.nvflare.job import export_job
    from fedmm.runtime.nvflare.poc import PocSystem

    job = RUNTIME_JOB
    nvflare_polling = ["runtime.task_check_period=0.5", "runtime.task_request_interval=2"]
    runs: dict[str, list[dict]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="fedmm-bench-") as tmp,
        LocalDeployment(Path(tmp) / "flower", 2) as net,
        PocSystem(Path(tmp) / "nvflare", ["site-1", "site-2"]) as poc,
    ):

        def flower(warm: str) -> Callable[[Path], None]:
            return lambda run_dir: net.run([*job, f"runtime.warm={warm}", f"output_dir={run_dir}"])

        def nvflare(rep: int) -> Callable[[Path], None]:
            def submit(run_dir: Path) -> None:
                export_job(Path(tmp) / f"job-{rep}", [*job, f"output_dir={run_dir}"], [])
                if (state := poc.wait(poc.submit(Path(tmp) / f"job-{rep}"))) != "COMPLETED":
                    raise SystemExit(f"the POC job ended {state}; see {poc.workspace}")

            return submit

        for rep in range(REPEATS):
            batch = {
                "runtime=local": lambda: fedmm("run", job, f"rt-local-{rep}"),
                "Flower: simulation": lambda: fedmm("run", [*job, "runtime=flower"], f"rt-flower-sim-{rep}"),
                "Flower: deployment, warm workers": lambda: _deployed_run(flower("true"), f"rt-flower-warm-{rep}"),
                "NVFlare: simulator": lambda: fedmm("run", [*job, "runtime=nvflare"], f"rt-nvflare-sim-{rep}"),
                "NVFlare: POC system, exported job": lambda: _deployed_run(nvflare(rep), f"rt-nvflare-poc-{rep}"),
            }
            if rep == 0:  # the reference rows
                batch["Flower: deployment, Flower default"] = lambda: _deployed_run(
                    flower("false"), "rt-flower-default"
                )
                batch["NVFlare: simulator, NVFlare's default polling"] = lambda: fedmm(
                    "run", [*job, "runtime=nvflare", *nvflare_polling], "rt-nvflare-sim-default"
                )
            for name, measure in batch.items():
                runs.setdefault(name, []).append(measure())
    return [
        {
            "runtime": name,
            "runs": len(rs),
            "wall_s": median([r["wall"] for r in rs]),
            "startup_s": median([r["wall"] - sum(x["seconds"] for x in r["records"]) for r in rs]),
            "first_round_s": median([r["records"][0]["seconds"] for r in rs]),
            "round_overhead_s": median(
                [median(_round_overheads(r["records"][1:], name == "runtime=local")) for r in rs]
            ),
            "training_s": median([median([x["client_seconds_max"] for x in r["records"]]) for r in rs]),
            "accuracy": median([r["records"][-1]["eval_accuracy"] for r in rs]),
        }
        for name, rs in runs.items()
    ]


SECTIONS = {
    "overhead": overhead,
    "communication": communication,
    "compression": compression_quality,
    "feature_cache": feature_cache,
    "scale": scale,
    "quality": quality,
    "levers": levers,
    "default_job": default_job,
    "runtimes": runtimes,
}


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(format(r[c[0]], c[2]) for c in cols) + " |\n" for r in rows)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed suite still stops the servers it started
    OUT.mkdir(parents=True, exist_ok=True)
    dest = ROOT / "docs" / "benchmarks"
    if "--render" in sys.argv:  # docs/BENCHMARKS.md again from the saved figures (after a change of its text)
        saved = json.loads((dest / "suite.json").read_text())
        meta = {k: saved[k] for k in ("command", "date", "machine", "repeats", "suite_seconds", "reruns") if k in saved}
        (ROOT / "docs" / "BENCHMARKS.md").write_text(report(meta, {k: saved[k] for k in SECTIONS if k in saved}))
        return 0
    unknown = sorted(set(ONLY or ()) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    t0 = time.perf_counter()
    results = {name: fn() for name, fn in SECTIONS.items() if ONLY is None or name in ONLY}
    meta = {
        "command": "python3 dev.py bench suite" + (" --quick" if QUICK else ""),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "repeats": REPEATS,
        "suite_seconds": time.perf_counter() - t0,
    }
    if QUICK:
        print(json.dumps({**meta, **results}, indent=2))
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    jobs = {
        "work": WORK,
        "blip": BLIP + BLIP_SIZE,
        "cache": CACHE,
        "cache_models": CACHE_MODELS,
        "quality": QUALITY,
        "quality_jobs": QUALITY_JOBS,
        "levers_jobs": LEVERS,
    }
    if ONLY is not None:  # the other sections keep their saved figures; the re-run is recorded
        saved = json.loads((dest / "suite.json").read_text())
        reruns = saved.get("reruns", []) + [
            {
                "sections": ONLY,
                "date": meta["date"],
                "machine": meta["machine"],
                "command": f"python3 dev.py bench suite --only {','.join(ONLY)}",
                "seconds": meta["suite_seconds"],
            }
        ]
        meta = {k: saved[k] for k in meta}
        results = {**{k: saved[k] for k in SECTIONS if k in saved}, **results}
        meta["reruns"] = reruns
    (dest / "suite.json").write_text(json.dumps({**meta, **jobs, **results}, indent=2) + "\n")
    (ROOT / "docs" / "BENCHMARKS.md").write_text(report(meta, results))
    print((ROOT / "docs" / "BENCHMARKS.md").read_text())
    return 0


def report(meta: dict, r: dict) -> str:
    over = table(
        r["overhead"],
        [
            ("clients", "clients", "d"),
            ("federated_wall_s", "runtime=local (s)", ".1f"),
            ("centralized_wall_s", "centralized (s)", ".1f"),
            ("ratio", "ratio", ".3f"),
            ("federated_startup_s", "start-up fed (s)", ".2f"),
            ("centralized_startup_s", "start-up central (s)", ".2f"),
            ("per_round_overhead_s", "overhead per round (s)", ".3f"),
            ("machinery_per_round_s", "machinery per round (s)", ".3f"),
            ("federated_accuracy", "acc fed", ".3f"),
            ("centralized_accuracy", "acc central", ".3f"),
        ],
    )
    comm = table(
        r["communication"],
        [
            ("model", "model", "s"),
            ("variant", "what travels up", "s"),
            ("bytes_up", "bytes per client per round", ",d"),
            ("reduction_vs_full", "reduction vs full fine-tuning", ".4%"),
        ],
    )
    quality = table(
        r["compression"],
        [
            ("kind", "compression.kind", "s"),
            ("eval_vqa_accuracy", "final VQA accuracy", ".3f"),
            ("bytes_up_per_round", "bytes up per round (4 clients)", ",.0f"),
        ],
    )
    scale_rows = table(
        r["scale"],
        [
            ("clients", "clients (K)", "d"),
            ("per_round", "clients per round", "d"),
            ("round_s", "seconds per round", ".2f"),
            ("peak_mb", "peak memory (MB)", ".0f"),
        ],
    )
    cache = table(
        r["feature_cache"],
        [
            ("model", "model", "s"),
            ("first_round_cached_s", "first round, cached (s)", ".2f"),
            ("round_cached_s", "later rounds, cached (s)", ".2f"),
            ("round_uncached_s", "later rounds, uncached (s)", ".2f"),
            ("training_cached_s", "client training, cached (s)", ".2f"),
            ("training_uncached_s", "client training, uncached (s)", ".2f"),
            ("speedup", "training speed-up", ".1f"),
            ("same_accuracy", "same accuracy", ""),
        ],
    )
    qual = table(
        r["quality"],
        [
            ("model", "model", "s"),
            ("metric", "metric", "s"),
            ("federated", "federated", ".3f"),
            ("centralized", "centralized", ".3f"),
            ("ratio", "ratio", ".3f"),
        ],
    )
    lever_rows = (
        table(
            r["levers"],
            [
                ("lever", "federated arm (centralized: the same settings)", "s"),
                ("federated", "federated", ".3f"),
                ("centralized", "centralized", ".3f"),
                ("ratio", "ratio", ".3f"),
            ],
        )
        if "levers" in r
        else "(not yet measured)\n"
    )
    default_rows = (
        table(
            r["default_job"],
            [
                ("seed", "seed", "d"),
                ("accuracy", "eval_accuracy (9,673 test questions)", ".4f"),
                ("first_s", "first run, wall (s)", ".1f"),
                ("repeat_s", "repeat run, cache warm, wall (s)", ".1f"),
                ("repeat_accuracy", "repeat run's eval_accuracy", ".4f"),
                ("peak_mb", "peak memory (MB)", ".0f"),
            ],
        )
        if "default_job" in r
        else "(not yet measured)\n"
    )
    gpu_page = ROOT / "docs" / "benchmarks" / "gpu.md"
    gpu = (
        "Measured: [docs/benchmarks/gpu.md](benchmarks/gpu.md)."
        if gpu_page.exists()
        else "Not yet measured: no GPU has been lent to this project's machines yet. On a machine with a CUDA GPU, "
        "`python3 dev.py bench gpu` measures it (under 8 minutes) and writes docs/benchmarks/gpu.md; "
        "`python3 dev.py bench gpu --smoke` checks the script on the CPU with the tiny models."
    )
    runtime_cols = [
        ("runtime", "runtime", "s"),
        ("wall_s", "wall (s)", ".1f"),
        ("startup_s", "start-up (s)", ".1f"),
        ("first_round_s", "round 1 (s)", ".2f"),
        ("round_overhead_s", "overhead per later round (s)", ".2f"),
        ("training_s", "client training per round (s)", ".2f"),
        ("accuracy", "accuracy", ".3f"),
    ]
    rt = (
        table(r["runtimes"], runtime_cols[:1] + [("runs", "runs", "d")] + runtime_cols[1:])
        if "runtimes" in r
        else "(not yet measured)\n"
    )
    reruns = "".join(
        f"\nSection(s) {', '.join(x['sections'])} re-run on {x['date']} with `{x['command']}` "
        f"({x['seconds'] / 60:.1f} minutes, {x['machine']})."
        for x in meta.get("reruns", [])
    )
    shapes = "; ".join(sorted({f"{x['model']}: {x['shapes']}" for x in r["communication"]}))
    return f"""# Benchmarks

Produced by `{meta["command"]}` on {meta["date"]} ({meta["machine"]}); the suite took
{meta["suite_seconds"] / 60:.1f} minutes. Medians over {meta["repeats"]} repeats where a row says so; compared runs
alternate within each repeat. Raw figures: [benchmarks/suite.json](benchmarks/suite.json).{reruns}
Other pages, each written by its own script: [strategies on missing modalities](benchmarks/strategies.md)
(`python3 dev.py bench strategies`), [robustness to Byzantine clients](benchmarks/robustness.md)
(`python3 dev.py bench robustness`), [privacy against utility, and the cost of SecAgg+](benchmarks/privacy.md)
(`python3 dev.py bench privacy`), [the source systems as published beside fedmm's fixes](benchmarks/seeds.md)
(`python3 dev.py bench seeds`) and [per-site evaluation and personalization](benchmarks/sites.md) (`python3 dev.py
bench sites`).

## Runtime overhead: `runtime=local` against `fedmm centralized`

The same work: tiny fusion on synthetic data (4,000 training examples), {ROUNDS} rounds x 1 local epoch on K
clients (IID) against {ROUNDS} centralized epochs over the same examples, both evaluating on the test split after
every round/epoch, each in its own process (`{" ".join(WORK)}`). Ratio = federated / centralized wall time;
overhead per round = (federated - centralized wall time) / rounds; machinery per round = a round's time less client
training and server evaluation (serialising, decoding and aggregating updates); start-up = wall time outside the
rounds (imports, data, model). Accuracy after 5 rounds / epochs: with more clients FedAvg needs more rounds.

{over}
Target: within 10% of centralized (ratio <= 1.10). The same work on Flower and NVFlare is in
[the runtimes section](#the-same-job-on-flower-and-nvflare) below.

## Communication per client per round

Counted on the meta device from the model shapes ({shapes}). Full fine-tuning sends every parameter; LoRA sends the
adapters; `ffa_lora` only the B matrices; compression applies to the uplink (the global model goes down in fp32).

{comm}
Target: at least 99.9% less than full fine-tuning (the seed reports 99.7% for LoRA).

## Compression and accuracy

Tiny BLIP on generative easy-VQA (`{" ".join(BLIP + BLIP_SIZE)}`), one run per kind, error feedback on:

{quality}
## Scale: clients in one process

The overhead job's 4,000 examples dealt to K clients (IID), 2 rounds, one process; peak memory is the process's
maximum resident set.

{scale_rows}
The last row deals 20,000 examples to 10,000 clients (2 each) and samples 100 per round
(`task.num_train=20000 clients_per_round=100`). Memory: one model instance serves every client, and FedAvg-family
strategies add each update to a running sum as it arrives (the server never holds K updates), so what grows with K
is the per-client bookkeeping only.

## Cached features for frozen encoders

Both encoders frozen (`model.freeze_text=true model.freeze_image=true`), easy-VQA, 2 clients, 3 rounds
(`{" ".join(CACHE)}`); `model.cache_features=true` (the default) against `false`. The first round encodes every
client's data once; later rounds train the projections and the head on the cached features. Client training time
per round is the median over rounds 2-3; the round time also holds the server's evaluation and aggregation.

{cache}
Target: rounds at least 10x faster. "same accuracy": the final server accuracy of the two runs is identical.

## Federated vs centralized quality

K=8 clients, Dirichlet alpha=0.5, every client with both modalities, against `fedmm centralized` with the same
sample-epochs (`{" ".join(QUALITY)}` plus each job's settings in suite.json). Ratio = federated / centralized.

{qual}
Target: at least 0.98 (the FedUMM paper reports 80.2 vs 82.4, 0.973). What was tried for the default model
(`{" ".join(MOBILENET)}` plus each row's settings, on the setting above; one seed each):

{lever_rows}
With both encoders frozen and their features cached, a round costs only the head (about 0.4 s for 6,000
examples), so more and cheaper rounds are the lever that wins; a constant learning rate beats the cosine decay at
the same budget. Server momentum (0.5: within a few thousandths of plain FedAvg; 0.9: worse), FedAdam and FedProx
(mu 0.1) do not help this model, and neither do a larger batch, more local epochs per round or SGD clients.
The tiny-BLIP job runs both arms at lr=0.003: at the preset's 0.01 the centralized run (3,000 sequential steps)
does not learn (0.345, against 0.666 federated).

## The default job

`fedmm run` with no arguments (fusion_mobilenet on easy-VQA: 4 clients, Dirichlet alpha 0.5 over the answers,
client 2 text-only and client 3 image-only, 60 rounds of FedAvg on 12,000 questions of which each client holds out
10% as its own test set for `client_eval`, evaluated on all 9,673 test questions). The first run starts from an
empty feature cache (`model.cache_dir`) and encodes every image and question once; the repeat finds them on disk.
Wall time of the whole command, environment already built.

{default_rows}
Target: at least 0.95 accuracy, at most 120 s on a first run and 60 s on a repeat.

## GPU

{gpu}

## The same job on Flower and NVFlare

The overhead job with K=2 (`{" ".join(RUNTIME_JOB)}`: one torch thread per client, as the clients of the
distributed runtimes train at once), side by side in each repeat:
- the embedded runtime (its clients train one after the other);
- Flower 1.41: `runtime=flower` (its simulation engine, Ray, in one command), and a real SuperLink with 2 SuperNodes
  on 127.0.0.1 with TLS and SuperNode authentication (`fedmm.runtime.flower.localnet`, the README's deployment
  commands) driven by `flwr run`, with fedmm's warm workers (`runtime.warm=true`, the default);
- NVFlare 2.9: `runtime=nvflare` (its simulator, in one command; the server and each site are processes), and the
  job that `fedmm export nvflare` writes, submitted with `nvflare job submit` to a POC system on 127.0.0.1 (a server
  and 2 sites with mutual TLS, `fedmm.runtime.nvflare.poc`);
- two reference rows, run once: Flower's default behaviour (`runtime.warm=false`: the same app, but each message's
  fresh ClientApp process imports torch, builds the model and loads the data), and NVFlare's default polling
  intervals (`runtime.task_check_period=0.5 runtime.task_request_interval=2` instead of fedmm's 0.1 s each).

Overhead per round = a round's time less client training (the slowest client's where clients train at once) and
the server's evaluation, median over rounds 2-{ROUNDS}; start-up = wall time outside the rounds (for a deployment:
from `flwr run` or `nvflare job submit` to the run's end, the servers and clients already running).

{rt}
- A deployed Flower round has a floor that no app can remove: a SuperNode that finds no message sleeps 3 s before
  asking again, and every message starts a new ClientApp process. fedmm pulls replies every 0.05 s instead of the
  3 s of Flower's `send_and_receive`.
- An NVFlare site's client script stays in its receive loop for the whole job (the in-process Client API), so the
  model and data are built once per site, in round 1. fedmm shortens NVFlare's polling in every job it builds (the
  server's check for results, a site's wait before asking for its next task); what is left per round is mostly
  the in-process Client API's result check every 0.5 s (a constant in NVFlare 2.9) and the task exchange.

## Not yet measured

- GPU throughput of full-size `blip_vqa` (no GPU machine was lent to this task).
"""


if __name__ == "__main__":
    raise SystemExit(main())
