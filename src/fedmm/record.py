"""The record of metrics.jsonl: one JSON object per round (federated) or epoch (centralized). This module is its one
owner: the server loop and the centralized run build records here, and the terminal table, report.md, the sweep
summary and the benchmarks read them through the names defined here.

Every field carries its unit and meaning (`describe()` prints them; docs/ARCHITECTURE.md lists them). Evaluation
figures are written as `eval_<metric>` (`eval_loss`, `eval_accuracy`, `eval_micro_f1`, ...) and a strategy's own
figures as `strategy_<name>`. `num_clients` is kept as an alias of `clients_replied`, the name older runs used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Optional


def _f(unit: str, help: str, **kw: Any) -> Any:
    return field(metadata={"unit": unit, "help": help}, **kw)


@dataclass
class RoundRecord:
    """One federated round."""

    round: int = _f("", "the round, from 1")
    clients_sampled: int = _f("clients", "clients asked to train this round")
    clients_replied: int = _f("clients", "clients whose update was aggregated (num_clients: the same, older name)")
    clients: list[int] = _f("ids", "the ids of the clients that replied, in aggregation order")
    num_examples: int = _f("examples", "training examples over the clients that replied")
    lr: float = _f("", "the clients' learning rate this round, after the schedule")
    train_loss: float = _f("", "the clients' training loss, example-weighted")
    bytes_down: int = _f("bytes", "serialized global parameters sent, summed over the sampled clients")
    bytes_up: int = _f("bytes", "serialized updates received, summed over the replies (rejected ones included)")
    client_seconds: float = _f("s", "local training time, summed over the clients")
    client_seconds_max: float = _f("s", "the slowest client's training time (what parallel clients wait for)")
    eval_seconds: float = _f("s", "evaluation time: the server's, and the sites' in a round with client_eval")
    seconds: float = _f("s", "the whole round, wall time")
    eval: dict[str, float] = _f(
        "", "server evaluation on the test split, written as eval_<metric>", default_factory=dict
    )
    strategy: dict[str, Any] = _f("", "the strategy's own figures, written as strategy_<name>", default_factory=dict)
    failures: dict[int, str] = _f("", "client id -> why it failed (only when some did)", default_factory=dict)
    rejected: dict[int, str] = _f(
        "", "client id -> why the server refused its update (only when it did)", default_factory=dict
    )
    clipped: dict[int, float] = _f(
        "",
        "client id -> its update norm before clipping to norm_bound or privacy.clip_norm (only when some)",
        default_factory=dict,
    )
    norm_bound: Optional[float] = _f("", "this round's bound on update norms (only with max_update_norm)", default=None)
    dp_epsilon: Optional[float] = _f(
        "",
        "privacy=dp: the epsilon spent by all rounds so far, at privacy.delta (dp-accounting's RDP accountant)",
        default=None,
    )
    dp_noise_multiplier: Optional[float] = _f(
        "",
        "privacy=dp: the noise std on this round's sum over clip_norm (local mode: of the clients that contributed)",
        default=None,
    )

    val: dict[str, float] = _f(
        "",
        "select_best: server evaluation on the validation split, written as val_<metric> (what selection uses)",
        default_factory=dict,
    )
    best_round: Optional[int] = _f("", "select_best: the round of best.safetensors so far", default=None)
    early_stop: Optional[str] = _f("", "why the run ended before `rounds` (early_stop.patience)", default=None)
    client_eval: dict[int, dict[str, float]] = _f(
        "",
        "client_eval: client id -> num_examples and its figures on its own test data (personal_<metric>: its personal "
        "model's), only in rounds with client-side evaluation",
        default_factory=dict,
    )
    client_eval_summary: dict[str, float] = _f(
        "",
        "over the sites that scored: <metric>_mean (example-weighted), <metric>_min (the worst site), <metric>_std "
        "(across sites), written as client_eval_<metric>_<stat>",
        default_factory=dict,
    )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "clients_sampled": self.clients_sampled,
            "clients_replied": self.clients_replied,
            "num_clients": self.clients_replied,
        }
        for f in fields(self):
            if f.name in out or f.name in (
                "eval",
                "strategy",
                "failures",
                "rejected",
                "clipped",
                "norm_bound",
                "dp_epsilon",
                "dp_noise_multiplier",
                "client_eval",
                "client_eval_summary",
                "val",
                "best_round",
                "early_stop",
                "seconds",
            ):
                continue
            out[f.name] = getattr(self, f.name)
        out.update(prefixed("eval", self.eval))
        out.update(prefixed("strategy", self.strategy))
        out.update(prefixed("val", self.val))
        for name in ("best_round", "early_stop"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("failures", "rejected", "clipped", "norm_bound", "dp_epsilon", "dp_noise_multiplier"):
            if getattr(self, name) or (name.startswith("dp_") and getattr(self, name) is not None):
                out[name] = getattr(self, name)
        if self.client_eval:
            out["client_eval"] = {str(k): v for k, v in self.client_eval.items()}
            out.update(prefixed("client_eval", self.client_eval_summary))
        out["seconds"] = self.seconds
        return out


@dataclass
class EpochRecord:
    """One epoch of the centralized baseline (`epoch` where a federated run writes `round`)."""

    epoch: int = _f("", "the epoch, from 1")
    num_examples: int = _f("examples", "training examples")
    lr: float = _f("", "the learning rate this epoch, after the schedule")
    train_loss: float = _f("", "training loss over the epoch")
    eval: dict[str, float] = _f("", "evaluation on the test split, written as eval_<metric>", default_factory=dict)
    seconds: float = _f("s", "the epoch, wall time", default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "num_examples": self.num_examples,
            "lr": self.lr,
            "train_loss": self.train_loss,
            **prefixed("eval", self.eval),
            "seconds": self.seconds,
        }


# What the terminal table and report.md show besides the step and the evaluation figures.
SUMMARY_COLUMNS = ("clients_replied", "train_loss", "bytes_up", "bytes_down", "dp_epsilon", "seconds")


def prefixed(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def step_key(records: list[dict[str, Any]]) -> str:
    """`epoch` for a centralized run's records, else `round`."""
    return "epoch" if records and "epoch" in records[0] else "round"


def is_eval_metric(key: str) -> bool:
    """An evaluation figure of a record (eval_seconds is a timing)."""
    return key.startswith("eval_") and key != "eval_seconds"


def eval_metrics(records: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({k for r in records for k in r if is_eval_metric(k)})


def eval_summary(record: dict[str, Any]) -> str:
    """A run's final evaluation in one line: `eval_loss=0.1234, eval_accuracy=0.9876`."""
    return ", ".join(f"{k}={v:.4f}" for k, v in record.items() if is_eval_metric(k))


def describe() -> str:
    """Every column of both records with its unit and meaning, as a Markdown table."""
    lines = ["| record | column | unit | meaning |", "|---|---|---|---|"]
    for cls in (RoundRecord, EpochRecord):
        for f in fields(cls):
            name = {
                "eval": "eval_<metric>",
                "val": "val_<metric>",
                "strategy": "strategy_<name>",
                "client_eval_summary": "client_eval_<metric>_<stat>",
            }.get(f.name, f.name)
            lines.append(f"| {cls.__name__} | `{name}` | {f.metadata['unit']} | {f.metadata['help']} |")
    return "\n".join(lines)
