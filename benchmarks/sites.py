"""Every site's view: per-site figures of the global model and of each personalization, and the per-sample robustness
axes of FedMultimodal (samples missing a modality, noisy labels) under three aggregation strategies.

Personalization: `personalize=none|finetune|fedper|fedbn|ditto` at Dirichlet alpha 0.1 and 1.0, each site scoring
on its own held-out 10% (`client_eval=final`, `task.client_test_fraction=0.1`): the example-weighted mean over the
sites and the worst site, for the global model and the personal one. Two sets: the strategy comparison's synthetic
benchmark with both modalities at every client (24 classes that need both modalities, 6 clients, 10 rounds,
`fusion_tiny`), and easy-VQA with the default job's model (`fusion_mobilenet`, frozen pretrained encoders, 4
clients, 30 rounds at lr 0.01: half the default job's 60).

Robustness: fedavg, modality_avg and fedmap on the synthetic set with 0, 30 and 60% of every client's training
samples missing their image (and, separately, their text), with and without 20% of the labels replaced at random;
the server's test accuracy after 10 rounds.

One seed (42) per cell: the differences below that are smaller than a few points are within what another seed moves.

    python3 dev.py bench sites            # writes docs/benchmarks/sites.{json,md}
    python3 dev.py bench sites --render   # sites.md again from sites.json

Run directories go to benchmarks/results/sites/ (not committed).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from seeds import publish, run  # benchmarks/ is the script's folder
from strategies import COMMON as STRATEGY_BENCHMARK

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sites"
DEST = ROOT / "docs" / "benchmarks"
MODES = ["none", "finetune", "fedper", "fedbn", "ditto"]
ALPHAS = [0.1, 1.0]
# the strategy comparison's synthetic set, every client with both modalities (personalization is about label skew)
SYNTHETIC = [
    a for a in STRATEGY_BENCHMARK if not a.startswith(("progress=", "modality.", "partition.alpha=", "client_eval="))
] + [
    "modality.text_only=[]",
    "modality.image_only=[]",
]
EASYVQA = ["rounds=30"]  # the default job (easy-VQA, fusion_mobilenet, 4 clients, lr 0.01), half its rounds
STRATEGIES = ["fedavg", "modality_avg", "fedmap"]
MISSING = [("none", 0.0), ("image", 0.3), ("image", 0.6), ("text", 0.3), ("text", 0.6)]
NOISE = [0.0, 0.2]


def personalization_rows(task: str, base: list[str]) -> list[dict]:
    rows = []
    for alpha in ALPHAS:
        for mode in MODES:
            final = run(
                [*base, f"partition.alpha={alpha}", f"personalize={mode}", "client_eval=final"],
                f"{task}-{alpha}-{mode}",
                OUT,
            )
            row = {"task": task, "alpha": alpha, "personalize": mode, "server": final["eval_accuracy"]}
            for who in ("", "personal_"):
                for stat in ("mean", "min"):
                    key = f"client_eval_{who}accuracy_{stat}"
                    if key in final:
                        row[f"{who}{stat}"] = final[key]
            row["seconds"] = final["seconds"]
            rows.append(row)
            print(row, file=sys.stderr)
    return rows


def robustness_rows() -> list[dict]:
    rows = []
    for noise in NOISE:
        for modality, rate in MISSING:
            missing = [f"modality.sample_missing_{modality}={rate}"] if rate else []
            for strategy in STRATEGIES:
                args = [
                    *SYNTHETIC,
                    "partition.alpha=0.5",
                    f"strategy={strategy}",
                    f"noise.label_rate={noise}",
                    *missing,
                ]
                final = run([*args, "client_eval=none"], f"robust-{strategy}-{modality}{rate}-{noise}", OUT)
                row = {"strategy": strategy, "missing": modality, "rate": rate, "noise": noise}
                rows.append({**row, "accuracy": final["eval_accuracy"], "seconds": final["seconds"]})
                print(rows[-1], file=sys.stderr)
    return rows


def personalization_table(rows: list[dict], task: str) -> str:
    lines = [
        "| alpha | personalize | global: mean | global: worst site | personal: mean | personal: worst site "
        "| server test |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["task"] == task):
        personal = f"{r['personal_mean']:.3f} | {r['personal_min']:.3f}" if "personal_mean" in r else "– | –"
        lines.append(
            f"| {r['alpha']} | {r['personalize']} | {r['mean']:.3f} | {r['min']:.3f} | {personal} | {r['server']:.3f} |"
        )
    return "\n".join(lines)


def robustness_table(rows: list[dict]) -> str:
    lines = [
        "| samples missing | label noise | " + " | ".join(STRATEGIES) + " |",
        "|---|---|" + "---|" * len(STRATEGIES),
    ]
    for noise in NOISE:
        for modality, rate in MISSING:
            cell = {
                r["strategy"]: r["accuracy"]
                for r in rows
                if r["noise"] == noise and r["missing"] == modality and r["rate"] == rate
            }
            what = "none" if not rate else f"{rate:.0%} {modality}"
            lines.append(f"| {what} | {noise:.0%} | " + " | ".join(f"{cell[s]:.3f}" for s in STRATEGIES) + " |")
    return "\n".join(lines)


def best_personal(rows: list[dict], task: str, alpha: float) -> tuple[str, float, float]:
    """The personalization with the best worst site at `alpha`, its worst site, and the global model's."""
    mine = [r for r in rows if r["task"] == task and r["alpha"] == alpha]
    glob = next(r for r in mine if r["personalize"] == "none")["min"]
    best = max((r for r in mine if "personal_min" in r), key=lambda r: r["personal_min"])
    return best["personalize"], best["personal_min"], glob


def robust_reading(rows: list[dict], margin: float = 0.02) -> str:
    """Where modality-aware aggregation beats plain FedAvg by more than `margin`, and where it does not."""
    cells = {(r["strategy"], r["missing"], r["rate"], r["noise"]): r["accuracy"] for r in rows}
    conditions = sorted({k[1:] for k in cells})
    out = []
    for strategy in STRATEGIES[1:]:
        diffs = [cells[(strategy, *c)] - cells[("fedavg", *c)] for c in conditions]
        if not any(diffs):
            out.append(
                f"{strategy} gives fedavg's numbers exactly in all {len(diffs)} conditions: a sample that lacks a "
                "modality does not change which clients send a tensor (each holds both), and averaging every tensor "
                "over its senders is then FedAvg; modality-aware averaging matters when whole clients lack a "
                "modality (the strategy comparison)"
            )
            continue
        better = sum(d > margin for d in diffs)
        worse = sum(d < -margin for d in diffs)
        out.append(
            f"{strategy} beats fedavg by more than {margin:.2f} in {better} of {len(diffs)} conditions, trails it "
            f"by more than that in {worse} (mean difference {sum(diffs) / len(diffs):+.3f})"
        )
    return "Reading: " + "; ".join(out) + "."


def headline(saved: dict) -> str:
    parts = []
    for task in ("synthetic", "easyvqa"):
        for alpha in ALPHAS:
            mode, best, glob = best_personal(saved["personalization"], task, alpha)
            if best > glob:
                parts.append(f"{task} alpha {alpha}: worst site {glob:.3f} (global) -> {best:.3f} ({mode})")
            else:
                parts.append(
                    f"{task} alpha {alpha}: no personalization helps the worst site ({glob:.3f} global, best "
                    f"personal {best:.3f} with {mode})"
                )
    return "; ".join(parts)


def render(saved: dict) -> str:
    rows, robust = saved["personalization"], saved["robustness"]
    doc = __doc__.split("\n\n")
    notes = [
        "Reading the personalization tables: `global` is the shared model scored by each site on its own test data;",
        "`personal` is the site's own model (fine-tuned after the last round, its own head or normalisation layers, or",
        "its Ditto model). Under fedper and fedbn the global model carries the *initial* head or normalisation layers",
        "(the trained ones never leave the sites), so its global figures are not a model anyone would use; the",
        "server's test figure has the same caveat.",
    ]
    return (
        "# Per-site evaluation, personalization and per-sample robustness\n\n"
        + "\n\n".join(doc[1:4])
        + f"\n\nCommand: `{saved['command']}` ({saved['date']}, {saved['machine']}).\n\n"
        f"Headline: {headline(saved)}.\n\n"
        f"## Personalization, synthetic set\n\nOverrides: `{' '.join(SYNTHETIC)}`\n\n"
        f"{personalization_table(rows, 'synthetic')}\n\n"
        f"## Personalization, easy-VQA with the default job's model\n\nOverrides: `{' '.join(EASYVQA)}`\n\n"
        f"{personalization_table(rows, 'easyvqa')}\n\n" + " ".join(notes) + "\n\n"
        "## Samples missing a modality, noisy labels (synthetic set, alpha 0.5, server test accuracy)\n\n"
        f"{robustness_table(robust)}\n\n{robust_reading(robust)}\n"
    )


def main() -> int:
    if "--render" in sys.argv:
        (DEST / "sites.md").write_text(render(json.loads((DEST / "sites.json").read_text())))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = personalization_rows("synthetic", SYNTHETIC)
    rows += personalization_rows("easyvqa", EASYVQA)
    return publish("sites", {"personalization": rows, "robustness": robustness_rows()}, render)


if __name__ == "__main__":
    sys.exit(main())
