"""Strategy comparison on a missing-modality benchmark: FedAvg vs modality_avg vs FedMAP vs FedProx.

Synthetic image + text data whose label needs both modalities (6 colours x 4 keywords = 24 classes),
6 clients (Dirichlet alpha 0.5), client 1 without images and client 2 without text, 3 seeds. Reports the final
server test accuracy per run and its mean and (sample) standard deviation per strategy.

    python3 dev.py bench strategies            # writes docs/benchmarks/strategies.{json,md}

Run directories go to benchmarks/results/strategies/ (not committed).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["fedavg", "modality_avg", "fedmap", "fedprox"]
SEEDS = [42, 1, 2]
COMMON = [
    "task=synthetic",
    "task.num_train=3000",
    "task.num_val=300",
    "task.num_test=1000",
    "task.image_classes=6",
    "task.text_classes=4",
    "task.noise=40",
    "model=fusion_tiny",
    "num_clients=6",
    "partition=dirichlet",
    "partition.alpha=0.5",
    "modality.text_only=[1]",
    "modality.image_only=[2]",
    "rounds=10",
    "local_epochs=1",
    "batch_size=32",
    "lr=0.003",
    "lr_schedule=constant",
    "client_eval=none",  # every client trains on its whole share, as when these figures were measured
    "progress=false",
]


def main() -> int:
    from fedmm.config import load_settings
    from fedmm.api import run_federated

    out_root = ROOT / "benchmarks" / "results" / "strategies"
    rows = []
    for strategy in STRATEGIES:
        for seed in SEEDS:
            run_dir = out_root / f"{strategy}-{seed}"
            if (run_dir / "metrics.jsonl").exists():
                import shutil

                shutil.rmtree(run_dir)
            t0 = time.perf_counter()
            final = run_federated(
                load_settings([*COMMON, f"strategy={strategy}", f"seed={seed}", f"output_dir={run_dir}"])
            )
            rows.append(
                {
                    "strategy": strategy,
                    "seed": seed,
                    "eval_accuracy": final["eval_accuracy"],
                    "seconds": time.perf_counter() - t0,
                }
            )
    summary = []
    for strategy in STRATEGIES:
        acc = [r["eval_accuracy"] for r in rows if r["strategy"] == strategy]
        sec = [r["seconds"] for r in rows if r["strategy"] == strategy]
        summary.append(
            {
                "strategy": strategy,
                "mean": statistics.mean(acc),
                "std": statistics.stdev(acc),
                "runs": acc,
                "median_seconds": statistics.median(sec),
            }
        )
    meta = {
        "command": "python3 dev.py bench strategies",
        "overrides": COMMON,
        "seeds": SEEDS,
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    dest = ROOT / "docs" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "strategies.json").write_text(json.dumps({**meta, "runs": rows, "summary": summary}, indent=2) + "\n")
    lines = [
        "| strategy | final test accuracy, mean ± std (3 seeds) | per seed (42, 1, 2) | median run time |",
        "|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| `{s['strategy']}` | {s['mean']:.3f} ± {s['std']:.3f} | "
            f"{', '.join(f'{a:.3f}' for a in s['runs'])} | {s['median_seconds']:.0f} s |"
        )
    table = "\n".join(lines)
    (dest / "strategies.md").write_text(
        f"# Strategy comparison: missing modalities\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n"
        f"Command: `{meta['command']}` ({meta['date']}, {meta['machine']}).\n"
        f"Overrides: `{' '.join(COMMON)}`\n\n{table}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
