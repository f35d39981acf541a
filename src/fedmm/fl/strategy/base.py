"""The Strategy interface shared by every runtime, and `ClientHook`, the client side a strategy may bring along.

A strategy is one module: the server side (`configure`, `aggregate`, `state_dict`) and, when it needs the clients to
do more than train (FedProx's proximal term, FedMAP's self-scoring), a `ClientHook` subclass set as its
`client_hook`. The server loop hands the client a `FitInstructions` whose `strategy_options` the strategy filled in
`configure`; the client builds the strategy's hook from them and calls it around local training.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from fedmm.fl.instructions import FitInstructions
from fedmm.fl.update import Update
from fedmm.params import Params
from fedmm.registry import STRATEGIES  # noqa: F401  (re-exported: strategies register here)

if TYPE_CHECKING:
    import torch

    from fedmm.data.dataset import MultimodalDataset


@dataclass
class StrategyContext:
    """What the server knows besides the updates, handed to `Strategy.setup` once before the first round.

    `evaluate_val` scores candidate global models on the server's *validation* split (never the test split), with
    the one model instance the server already holds.
    """

    evaluate_val: Optional[Callable[[Params], dict[str, float]]] = None
    metric: str = "accuracy"  # the task's first metric: what "better" means for strategies that search
    stat_keys: frozenset[str] = frozenset()  # running statistics (BatchNorm buffers): averaged, never "optimized"
    run_dir: Optional[Path] = None
    seed: int = 0
    num_clients: int = 0  # all the federation's clients, sampled this round or not (FedDyn's 1 / m)


@dataclass
class LocalRound:
    """One client's round as its strategy's hook sees it. The hook may replace `train` and `val` before training
    and adds what the client should report to `metrics`."""

    cid: int
    model: "torch.nn.Module"
    train: "MultimodalDataset"
    val: "Optional[MultimodalDataset]"  # the site's own validation rows, when it has some
    instructions: FitInstructions
    score: Callable[["MultimodalDataset", str], dict[str, float]]  # the model's loss and one metric on a data set
    metrics: dict[str, float] = field(default_factory=dict)
    num_examples: Optional[int] = None  # the count the update reports; None = len(train) as trained
    # the site's own state of a kind its strategy names (FedDyn's linear term), as of before this round, and its
    # store for this round: kept where the client runs, never sent (fedmm.client.state)
    load_state: Callable[[str], Optional[Params]] = lambda kind: None
    save_state: Callable[[str, Params], None] = lambda kind, params: None
    # tensors the strategy sent with the global model (SCAFFOLD's c), and those the hook sends back with the update
    from_server: Params = field(default_factory=dict)
    to_server: Params = field(default_factory=dict)


class ClientHook:
    """A strategy's client-side work in one round, built from its `strategy_options`. The default does nothing.

    `before_training` runs after the global parameters are loaded; `on_step(params)` before every optimizer step
    with the trained parameters (their gradients set, unscaled; parameters without a gradient, such as a missing
    modality's encoder, have `grad` None) and `after_step(params)` right after it; `after_training` before the
    update is taken from the model.
    """

    def __init__(self, options: dict[str, Any]):
        self.options = options

    def before_training(self, run: LocalRound) -> None:
        pass

    def on_step(self, params: list["torch.nn.Parameter"]) -> None:
        pass

    def after_step(self, params: list["torch.nn.Parameter"]) -> None:
        pass

    def after_training(self, run: LocalRound) -> None:
        pass


class Strategy:
    """Decides what each sampled client is asked to do and how their updates become the next global parameters.

    `state_dict()` must hold everything `aggregate` depends on besides its arguments (optimizer moments, learned
    aggregators...), so that a run resumed from a checkpoint continues exactly. Values may be numbers, strings,
    lists, dicts and numpy arrays.

    `round_metrics` is filled by `aggregate` with what the strategy wants recorded in metrics.jsonl for the round
    (written as `strategy_<name>`).

    A `streaming` strategy reads the updates once, in order, as an iterable: the server then hands them over as they
    arrive and never holds all K of them (a running sum). Others get a list.
    """

    streaming = False
    # True when `aggregate` depends on the updates only through their weighted mean (then post-processes it):
    # client-level DP and secure aggregation then hand it one update, the (noised) mean, and nothing else changes.
    averages = False
    client_hook: type[ClientHook] = ClientHook  # the client side (see ClientHook)

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.ctx = StrategyContext()
        self.round_metrics: dict[str, Any] = {}
        self.caught = 0  # replies of this round the server refused (malformed, out of bounds): set before aggregate

    def setup(self, ctx: StrategyContext) -> None:
        self.ctx = ctx

    @property
    def reported(self) -> tuple[str, ...]:
        """Figures every update must report, positive, for this strategy to weigh it (FedAvg's weight_by=steps:
        `batches`); the server rejects an update without them, like any malformed reply."""
        return ()

    def refuses(self, update: Update) -> Optional[str]:
        """Why this strategy cannot use a (well-formed) update, or None: by default a missing `reported` figure.
        The server records the reason and leaves the client out, like any malformed reply."""
        missing = [m for m in self.reported if not update.metrics.get(m, 0) > 0]
        return f"reports no positive {missing[0]}, which the strategy weighs it by" if missing else None

    def federation_size(self) -> int:
        """All the federation's clients (StrategyContext.num_clients), for rules that divide by it (FedDyn's and
        SCAFFOLD's 1 / m); an error before setup gave it."""
        if self.ctx.num_clients < 1:
            raise ValueError(f"{type(self).__name__} needs the federation's number of clients (StrategyContext)")
        return self.ctx.num_clients

    def check_round_size(self, n: int) -> None:
        """Refuse, with a FedmmError before the run starts, a round of `n` sampled clients that this rule cannot
        keep its promise for (Krum, Bulyan: their bounds on f)."""

    def downlink(self, rnd: int, global_params: Params) -> Params:
        """Tensors sent to every client with the global model this round (SCAFFOLD's c), keyed like it; counted
        in bytes_down. The client's hook finds them in `LocalRound.from_server`."""
        return {}

    def travels(self, key: str) -> bool:
        """Whether a trainable tensor is trained by clients and sent both ways. A strategy can keep some frozen at
        their shared initial values (FFA-LoRA's A matrices): the experiment then freezes them everywhere."""
        return True

    def configure(self, rnd: int, client_ids: list[int], base: FitInstructions) -> dict[int, FitInstructions]:
        """Each sampled client's instructions for this round: by default `base` (the run's lr after the schedule,
        local_epochs, ...); a strategy that asks more of its clients sets `strategy_options` (see `ask`)."""
        return {cid: base for cid in client_ids}

    @staticmethod
    def ask(client_ids: list[int], base: FitInstructions, **options: Any) -> dict[int, FitInstructions]:
        """`base` with `options` (JSON values) for this strategy's ClientHook, for every client."""
        asked = replace(base, strategy_options={**base.strategy_options, **options})
        return {cid: asked for cid in client_ids}

    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        """The next global parameters. `updates` is a list, or, for a `streaming` strategy, an iterable."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
