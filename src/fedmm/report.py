"""What a person reads of a run: the per-round table in the terminal while it runs, and report.md with metrics.png
from its metrics.jsonl afterwards (finished and interrupted runs alike). Column names come from `fedmm.record`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fedmm.console import say
from fedmm.record import SUMMARY_COLUMNS, eval_metrics, step_key
from fedmm.rundir import RunDir


class RoundTable:
    """The per-round (per-epoch) table printed in the terminal: `step` is `round` or `epoch`."""

    def __init__(self, step: str, metric_names: tuple[str, ...]):
        self.step = step
        self.cols = ["train_loss", "eval_loss"] + [f"eval_{m}" for m in metric_names]
        self.printed = False

    def __call__(self, r: dict[str, Any]) -> None:
        federated = self.step == "round"
        if not self.printed:
            head = f"{self.step:>6} " + (f"{'clients':>7} " if federated else "")
            head += " ".join(f"{c:>{max(13, len(c))}}" for c in self.cols)
            say(head + (f" {'MB up':>8} {'MB down':>8}" if federated else "") + f" {'sec':>6}")
            self.printed = True
        vals = " ".join(f"{r[c]:>{max(13, len(c))}.4f}" if c in r else f"{'':>{max(13, len(c))}}" for c in self.cols)
        comm = f" {r['bytes_up'] / 1e6:>8.2f} {r['bytes_down'] / 1e6:>8.2f}" if federated else ""
        clients = f"{r['clients_replied']:>7} " if federated else ""
        say(f"{r[self.step]:>6} {clients}{vals}{comm} {r['seconds']:>6.1f}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def plot_metrics(records: list[dict], step: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = eval_metrics(records)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [r[step] for r in records]
    axes[0].plot(xs, [r.get("train_loss") for r in records], marker="o", label="train_loss")
    if "eval_loss" in evals:
        axes[0].plot(*zip(*[(r[step], r["eval_loss"]) for r in records if "eval_loss" in r]), marker="o",
                     label="eval_loss")
    axes[0].set_xlabel(step)
    axes[0].set_title("loss")
    axes[0].legend()
    for k in evals:
        if k != "eval_loss":
            axes[1].plot(*zip(*[(r[step], r[k]) for r in records if k in r]), marker="o", label=k)
    axes[1].set_xlabel(step)
    axes[1].set_title("server evaluation (test split)")
    if len(evals) > 1:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dir: str | Path, title: str = "fedmm run") -> Path:
    rd = RunDir(run_dir)
    records = rd.read_metrics()
    step = step_key(records)
    evals = eval_metrics(records)
    cols = [step] + [k for k in SUMMARY_COLUMNS if any(k in r for r in records)] + evals
    lines = [f"# {title}", "", f"Run directory: `{rd.path}`", ""]
    if records:
        last = records[-1]
        lines += ["Final: " + ", ".join(f"{k} = {_fmt(last[k])}" for k in evals if k in last), ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in records]
        plot_metrics(records, step, rd.path / "metrics.png")
        lines += ["", "![metrics](metrics.png)"]
    else:
        lines += ["No completed rounds yet."]
    rd.write_text("report.md", "\n".join(lines) + "\n")
    return rd.path / "report.md"
