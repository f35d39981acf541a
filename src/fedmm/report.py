"""report.md and metrics.png from a run directory's metrics.jsonl (works on finished and interrupted runs)."""
from __future__ import annotations

from pathlib import Path

from fedmm.rundir import RunDir

TABLE_KEYS = ("num_clients", "train_loss", "bytes_up", "bytes_down", "seconds")


def is_eval_metric(key: str) -> bool:
    """An evaluation figure of a metrics record (eval_seconds is a timing)."""
    return key.startswith("eval_") and key != "eval_seconds"


def eval_summary(metrics: dict) -> str:
    """A run's final evaluation in one line: `eval_loss=0.1234, eval_accuracy=0.9876`."""
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if is_eval_metric(k))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def plot_metrics(records: list[dict], step: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = sorted({k for r in records for k in r if is_eval_metric(k)})
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
    step = "epoch" if records and "epoch" in records[0] else "round"
    evals = sorted({k for r in records for k in r if is_eval_metric(k)})
    cols = [step] + [k for k in TABLE_KEYS if any(k in r for r in records)] + evals
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
