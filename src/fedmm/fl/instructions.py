"""The round contract: what a client is told to do in one round, as one typed object with its defaults stated once.

The server loop fills it from the run's settings (`lr` after the schedule), the strategy adds what it asks of the
client (`strategy_options`, read on the client by the strategy's own `ClientHook`), and every runtime carries it
as the JSON of `to_json()`; the client reads it back with `from_json()`. Nothing else builds or reads a client's
round configuration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from fedmm.config.schema import CompressionConfig


@dataclass
class FitInstructions:
    """What one client does in one round (`task=fit`: train and send an update) or after it (`task=evaluate`: score
    the global and its personal model on its own held-out data and send only the figures)."""

    round: int  # 1-based; with `seed` and the client id it seeds the client's batch order and dropout
    seed: int  # the run's seed
    lr: float  # this round's learning rate, after the schedule
    local_epochs: int  # passes over the client's training data
    batch_size: int
    weight_decay: float  # the optimizer's
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9), fresh each round
    grad_accum_steps: int = 1  # batches per optimizer step
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast on a GPU
    pos_weight: bool = False  # multilabel: weight positives by the client's own negatives / positives
    zero_division: float = 1.0  # F1 of a label with nothing to find, when the client scores (task.zero_division)
    compression: CompressionConfig = field(default_factory=CompressionConfig)  # how the update travels up
    dp_clip_norm: Optional[float] = None  # local DP: clip the update delta to this L2 norm before sending
    dp_noise_std: float = 0.0  # local DP: then add Gaussian noise with this std (the client's share)
    dp_noise_seed: Optional[int] = None  # local DP: null draws the noise from the OS; a number makes it repeatable
    strategy: str = "fedavg"  # the strategy's registered name: its ClientHook does the client-side work
    strategy_options: dict[str, Any] = field(default_factory=dict)  # what the strategy asks (JSON values)
    task: str = "fit"  # fit | evaluate (client_eval; runtimes send it as their evaluate/validate message)
    eval_metrics: list[str] = field(default_factory=list)  # evaluate: the task's metrics
    personalize: str = "none"  # none | finetune | fedper | fedbn | ditto (fedmm.client.personal)
    personal_epochs: int = 1  # finetune: local epochs after the last round
    personal_lam: float = 0.1  # ditto: the personal model's pull toward the global one
    local_keys: list[str] = field(default_factory=list)  # fedper / fedbn: the tensors that stay at the site

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FitInstructions":
        data = dict(data)
        data["compression"] = CompressionConfig(**data.get("compression", {}))
        return cls(**data)
