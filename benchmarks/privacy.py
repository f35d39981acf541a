"""Privacy against utility: final test accuracy at a client-level epsilon of 1, 3 and 8 (privacy=dp, central noise,
delta 1e-5, the noise multiplier solved by `privacy.target_epsilon` for the planned rounds) and without DP, with
K=10 clients (all of them every round) and K=100 (Poisson sampling, 10 expected per round), for the default model
(fusion_minilm, 444,893 trainable values) on easy-VQA and for tiny BLIP with LoRA (46,080 adapter values) on
generative easy-VQA, and for fusion_tiny (28,212 values) on the synthetic task with K=1000 (100 expected per
round); then the cost of Flower's SecAgg+ per round against plain Flower (simulation, K=3 and K=10).

`noise/signal` is the expected L2 norm of the noise on the released mean delta, z * C * sqrt(d) / (q * K), over the
largest mean of clipped deltas, C: above 1 the noise outweighs any update. Client-level DP is made for federations
of thousands of clients (McMahan et al. trained with 763,430): with tens of clients the noise needed for a useful
epsilon drowns hundreds of thousands of trained values, and these rows measure exactly that; the K=1000 rows show
the regime where it is made to work.

    python3 dev.py bench privacy            # writes docs/benchmarks/privacy.{json,md}
    python3 dev.py bench privacy --render   # privacy.md again from privacy.json
    python3 dev.py bench privacy --continue # keep the runs an interrupted benchmark finished

Run directories go to benchmarks/results/privacy/ (not committed).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "privacy"
EPSILONS = [1.0, 3.0, 8.0, None]
COMMON = [
    "partition=iid",
    "modality.text_only=[]",
    "modality.image_only=[]",
    "client_eval=none",
    "progress=false",
    "threads=2",
]
MODELS = {
    # name: (overrides, clip_norm (about half the first round's median update norm), trainable values, metric)
    "fusion_minilm": (
        ["max_train_samples=3000", "max_eval_samples=1000", "lr_schedule=constant"],
        5.0,
        444_893,
        "eval_accuracy",
    ),
    "blip_vqa_tiny + LoRA": (
        ["experiment=blip_tiny_easyvqa", "max_train_samples=2000", "max_eval_samples=300"],
        2.5,
        46_080,
        "eval_vqa_accuracy",
    ),
    # where client-level DP is made to work: many clients, a small model
    "fusion_tiny (synthetic)": (
        ["task=synthetic", "model=fusion_tiny", "task.num_train=20000", "task.num_test=1000", "lr_schedule=constant"],
        1.0,
        28_212,
        "eval_accuracy",
    ),
}
# (label, extra overrides, rounds per model)
FEDERATIONS = [
    ("K=10, all every round", ["num_clients=10"], {"fusion_minilm": 10, "blip_vqa_tiny + LoRA": 6}),
    ("K=100, q=0.1", ["num_clients=100", "clients_per_round=10"], {"fusion_minilm": 20, "blip_vqa_tiny + LoRA": 10}),
    ("K=1000, q=0.1", ["num_clients=1000", "clients_per_round=100"], {"fusion_tiny (synthetic)": 20}),
]
SECAGG = [
    *COMMON,
    "task=synthetic",
    "model=fusion_tiny",
    "rounds=3",
    "runtime=flower",
    "runtime.cpus=2",
    "threads=1",
]  # one torch thread per simulated client: Ray gives each one core


def run(overrides: list[str], name: str) -> dict:
    """One run through the Python API (quiet), its records kept in result.json for --continue."""
    import fedmm

    run_dir = OUT / name
    done = run_dir / "result.json"
    if "--continue" in sys.argv and done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        result = {"records": fedmm.run([*overrides, f"output_dir={run_dir}"]).history}
    except fedmm.FedmmError as e:
        result = {"error": str(e)}
    result["seconds"] = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result))
    return result


def utility_rows() -> list[dict]:
    rows = []
    for model, (over, clip, dim, metric) in MODELS.items():
        for label, extra, rounds in FEDERATIONS:
            if model not in rounds:
                continue
            for eps in EPSILONS:
                args = [*COMMON, *over, *extra, f"rounds={rounds[model]}"]
                if eps is not None:
                    args += ["privacy=dp", f"privacy.target_epsilon={eps}", f"privacy.clip_norm={clip}"]
                k = int(extra[0].split("=")[1])
                name = f"{model.split()[0]}-{k}-{eps or 'nodp'}"
                result = run(args, name)
                row = {"model": model, "federation": label, "epsilon": eps, "seconds": result["seconds"]}
                if "error" in result:
                    row["error"] = result["error"]
                else:
                    last = result["records"][-1]
                    row.update(accuracy=last.get(metric), dp_epsilon=last.get("dp_epsilon"))
                    z = last.get("dp_noise_multiplier")
                    if z is not None:
                        q = 0.1 if k >= 100 else 1.0
                        row.update(noise_multiplier=z, noise_to_signal=z * clip * math.sqrt(dim) / (q * k) / clip)
                rows.append(row)
                acc = row.get("accuracy")
                print(
                    f"{model} {label} eps={eps}: {'-' if acc is None else f'{acc:.3f}'} ({row['seconds']:.0f} s)",
                    flush=True,
                )
    return rows


def secagg_rows() -> list[dict]:
    rows = []
    for k in (3, 10):
        for secure in (False, True):
            args = [*SECAGG, f"num_clients={k}"] + (["privacy.secure_aggregation=true"] if secure else [])
            result = run(args, f"secagg-{k}-{'secure' if secure else 'plain'}")
            rec = result.get("records", [])[1:]  # round 1 includes starting Flower's simulation
            rows.append(
                {
                    "clients": k,
                    "secure": secure,
                    "error": result.get("error"),
                    "seconds": result["seconds"],
                    "seconds_per_round": sum(r["seconds"] for r in rec) / max(len(rec), 1),
                    "bytes_up_per_round": sum(r["bytes_up"] for r in rec) / max(len(rec), 1),
                    "accuracy": rec[-1]["eval_accuracy"] if rec else None,
                }
            )
            print(f"secagg K={k} secure={secure}: {rows[-1]['seconds_per_round']:.2f} s/round", flush=True)
    return rows


def render(saved: dict) -> str:
    doc = [
        f"# Privacy and utility\n\n{__doc__.split(chr(10) + chr(10))[0]}\n\n{__doc__.split(chr(10) + chr(10))[1]}\n",
        f"Command: `{saved['command']}` ({saved['date']}, {saved['machine']}; {saved['seconds'] / 60:.0f} minutes).\n",
    ]
    for model, (over, clip, dim, metric) in MODELS.items():
        doc += [
            f"## {model}\n",
            f"Overrides: `{' '.join([*COMMON, *over])}`, clip_norm={clip:g}, "
            f"{dim:,} values clipped and noised; `{metric}` at the end.\n",
            "| federation | rounds | no DP | " + " | ".join(f"epsilon {e:g}" for e in EPSILONS if e) + " |",
            "|---|---|---|" + "---|" * (len(EPSILONS) - 1),
        ]
        for label, _, rounds in FEDERATIONS:
            if model not in rounds:
                continue
            cells = {r["epsilon"]: r for r in saved["rows"] if r["model"] == model and r["federation"] == label}

            def cell(e):
                r = cells.get(e, {})
                if "error" in r:
                    return "stopped"
                if r.get("accuracy") is None:
                    return "-"
                extra = f" (z={r['noise_multiplier']:.2f}, noise/signal {r['noise_to_signal']:.0f})" if e else ""
                return f"{r['accuracy']:.3f}{extra}"

            doc.append(
                f"| {label} | {rounds[model]} | {cell(None)} | " + " | ".join(cell(e) for e in EPSILONS if e) + " |"
            )
        doc.append("")
    doc += [
        "## The cost of SecAgg+\n",
        f"Overrides: `{' '.join(SECAGG)}`; rounds 2 and 3 averaged (round 1 "
        f"includes starting the simulation). Bytes up: plain Flower carries the updates; SecAgg+ carries the "
        f"public keys, encrypted key shares, masked vectors (int64) and unmasking shares.\n",
        "| clients | plain: s/round | SecAgg+: s/round | plain: MB up/round | SecAgg+: MB up/round |",
        "|---|---|---|---|---|",
    ]
    for k in (3, 10):
        p, s = (next(r for r in saved["secagg"] if r["clients"] == k and r["secure"] == x) for x in (False, True))
        doc.append(
            f"| {k} | {p['seconds_per_round']:.2f} | {s['seconds_per_round']:.2f} | "
            f"{p['bytes_up_per_round'] / 1e6:.2f} | {s['bytes_up_per_round'] / 1e6:.2f} |"
        )
    return "\n".join(doc) + "\n"


def main() -> int:
    dest = ROOT / "docs" / "benchmarks"
    if "--render" in sys.argv:
        (dest / "privacy.md").write_text(render(json.loads((dest / "privacy.json").read_text())))
        return 0
    rows, secagg = utility_rows(), secagg_rows()
    saved = {
        "command": "python3 dev.py bench privacy",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "seconds": round(sum(r["seconds"] for r in [*rows, *secagg]), 1),  # the runs' own time
        "rows": rows,
        "secagg": secagg,
    }
    (dest / "privacy.json").write_text(json.dumps(saved, indent=2) + "\n")
    doc = render(saved)
    (dest / "privacy.md").write_text(doc)
    print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
