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
            if "dp_epsilon" in r:  # privacy=dp: the privacy spent so far, every round
                self.cols.append("dp_epsilon")
            head = f"{self.step:>6} " + (f"{'clients':>7} " if federated else "")
            head += " ".join(f"{c:>{max(13, len(c))}}" for c in self.cols)
            say(head + (f" {'MB up':>8} {'MB down':>8}" if federated else "") + f" {'sec':>6}")
            self.printed = True
        vals = " ".join(f"{r[c]:>{max(13, len(c))}.4f}" if c in r else f"{'':>{max(13, len(c))}}" for c in self.cols)
        comm = f" {r['bytes_up'] / 1e6:>8.2f} {r['bytes_down'] / 1e6:>8.2f}" if federated else ""
        clients = f"{r['clients_replied']:>7} " if federated else ""
        say(f"{r[self.step]:>6} {clients}{vals}{comm} {r['seconds']:>6.1f}")


def _fmt(v, column: str = "") -> str:
    """Human units: bytes as MB, seconds to 0.1 s, other floats to 4 decimals."""
    if column.startswith("bytes_") and isinstance(v, (int, float)):
        return f"{v / 1e6:.2f} MB"
    if column == "seconds" and isinstance(v, (int, float)):
        return f"{v:.1f} s"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def config_summary(rd: RunDir) -> list[str]:
    """One line of what the run was (task, model, strategy, clients, partition, seed, runtime) and the partition
    table, from config.yaml and partition.json when they are there."""
    import json

    from omegaconf import OmegaConf

    lines = []
    cfg_path, part_path = rd.path / "config.yaml", rd.path / "partition.json"
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_path)) if cfg_path.exists() else None
        parts = json.loads(part_path.read_text()) if part_path.exists() else None
    except Exception:  # noqa: BLE001 - a damaged file only costs the summary, never the report
        return lines
    if isinstance(cfg, dict):
        name = lambda key: (cfg.get(key) or {}).get("name", "?") if isinstance(cfg.get(key), dict) else "?"
        partition = cfg.get("partition") or {}
        how = partition.get("name", "?") + (
            f" (alpha {partition.get('alpha')})" if partition.get("name") == "dirichlet" else ""
        )
        clients = len(parts) if isinstance(parts, list) else cfg.get("num_clients")
        lines += [
            f"Task `{name('task')}`, model `{name('model')}`, strategy `{name('strategy')}`, {clients} clients, "
            f"partition {how}, seed {cfg.get('seed')}, runtime `{name('runtime')}`.",
            "",
        ]
    if isinstance(parts, list) and parts and all(isinstance(p, dict) for p in parts):
        lines += ["| client | examples | modalities |", "|---|---|---|"]
        lines += [
            f"| {i} | {p.get('num_examples', '')} | {'+'.join(p.get('modalities', []))} |" for i, p in enumerate(parts)
        ]
        lines += [""]
    return lines


def plot_metrics(records: list[dict], step: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    evals = eval_metrics(records)
    comm = any("bytes_up" in r for r in records)
    fig, axes = plt.subplots(1, 3 if comm else 2, figsize=(15 if comm else 10, 3.6))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds and epochs are whole numbers
    xs = [r[step] for r in records]
    axes[0].plot(xs, [r.get("train_loss") for r in records], marker="o", label="train_loss")
    if "eval_loss" in evals:
        axes[0].plot(
            *zip(*[(r[step], r["eval_loss"]) for r in records if "eval_loss" in r]), marker="o", label="eval_loss"
        )
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
    if comm:  # what travelled each round, and the learning rate the clients used
        axes[2].plot(xs, [r.get("bytes_up", 0) / 1e6 for r in records], marker="o", label="MB up")
        axes[2].plot(xs, [r.get("bytes_down", 0) / 1e6 for r in records], marker="o", label="MB down")
        axes[2].set_xlabel(step)
        axes[2].set_title("communication (MB) and lr")
        axes[2].set_ylim(bottom=0)
        axes[2].legend(loc="upper left")
        lr = axes[2].twinx()
        lr.plot(xs, [r.get("lr") for r in records], color="grey", linestyle="--", label="lr")
        lr.set_ylabel("lr")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dir: str | Path, title: str = "fedmm run") -> Path:
    rd = RunDir(run_dir)
    records = rd.read_metrics()
    step = step_key(records)
    evals = eval_metrics(records)
    cols = [step] + [k for k in SUMMARY_COLUMNS if any(k in r for r in records)] + evals
    lines = [f"# {title}", "", f"Run directory: `{rd.path}`", "", *config_summary(rd)]
    if records:
        last = records[-1]
        final = [k for k in evals if k in last] + (["dp_epsilon"] if "dp_epsilon" in last else [])
        lines += ["Final: " + ", ".join(f"{k} = {_fmt(last[k])}" for k in final), ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c, ""), c) for c in cols) + " |" for r in records]
        plot_metrics(records, step, rd.path / "metrics.png")
        lines += ["", "![metrics](metrics.png)"]
    else:
        lines += ["No completed rounds yet."]
    rd.write_text("report.md", "\n".join(lines) + "\n")
    return rd.path / "report.md"
