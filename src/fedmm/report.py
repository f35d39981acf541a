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


def site_figures(record: dict[str, Any]) -> list[str]:
    """The figures a round's client_eval reports per site, global before personal (losses left out)."""
    names = {k for site in record.get("client_eval", {}).values() for k in site if k != "num_examples"}
    return sorted((k for k in names if not k.endswith("loss")), key=lambda k: (k.startswith("personal_"), k))


def site_summary_line(record: dict[str, Any]) -> str:
    """client_eval in one line: each figure's example-weighted mean and the worst site's."""
    parts = []
    for name in site_figures(record):
        worst = min(record["client_eval"].items(), key=lambda kv: kv[1].get(name, float("inf")))[0]
        parts.append(
            f"{name} mean {record[f'client_eval_{name}_mean']:.4f}, worst {record[f'client_eval_{name}_min']:.4f} "
            f"(client {worst})"
        )
    return f"sites ({len(record['client_eval'])}, own test data): " + "; ".join(parts)


def site_section(record: dict[str, Any], path: Path) -> list[str]:
    """report.md's per-site table of the last round with client_eval, and sites.png: each site's figure (global
    and personal) beside the server's on its own test split."""
    names, sites = site_figures(record), record["client_eval"]
    lines = [f"## Per-site evaluation (round {record['round']}, each site's own test data)", ""]
    lines += ["| site | test examples | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for site, figures in sorted(sites.items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {site} | {figures['num_examples']} | " + " | ".join(_fmt(figures.get(n, "")) for n in names) + " |"
        )
    for stat, label in (("mean", "mean (example-weighted)"), ("min", "worst site"), ("std", "std across sites")):
        lines.append(
            f"| {label} | | " + " | ".join(_fmt(record.get(f"client_eval_{n}_{stat}", "")) for n in names) + " |"
        )
    server = f"eval_{names[0]}" if names else ""
    if server in record:
        lines += ["", f"The server's `{server}` on its own test split: {_fmt(record[server])}."]
    try:
        plot_sites(record, names, path)
        lines += ["", f"![sites]({path.name})"]
    except Exception as e:  # noqa: BLE001 - a plot never costs the report
        lines += ["", f"(no plot: {e})"]
    return lines + [""]


def plot_sites(record: dict[str, Any], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = next((n for n in names if not n.startswith("personal_")), None)
    if metric is None:
        return
    shown = [metric] + ([f"personal_{metric}"] if f"personal_{metric}" in names else [])
    sites = sorted(record["client_eval"], key=int)
    x = np.arange(len(sites))
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(sites) + 2), 3.5))
    for i, name in enumerate(shown):
        ax.bar(x + i * width, [record["client_eval"][s].get(name, 0) for s in sites], width, label=name)
    if f"eval_{metric}" in record:
        ax.axhline(record[f"eval_{metric}"], color="black", linestyle="--", label=f"server eval_{metric}")
    ax.set_xticks(
        x + width * (len(shown) - 1) / 2, [f"client {s}" for s in sites], rotation=45 if len(sites) > 8 else 0
    )
    ax.set_ylabel(metric)
    ax.set_title(f"per-site {metric}, round {record['round']}")
    ax.legend(fontsize=8)
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
        lines += ["", "![metrics](metrics.png)", ""]
        at_sites = [r for r in records if r.get("client_eval")]
        if at_sites:
            lines += site_section(at_sites[-1], rd.path / "sites.png")
    else:
        lines += ["No completed rounds yet."]
    rd.write_text("report.md", "\n".join(lines) + "\n")
    return rd.path / "report.md"
