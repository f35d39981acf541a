"""The options of strategies whose code imports torch, apart from that code, so that the configuration is validated
and listed without importing torch (as in fedmm/backends/configs.py). Each is declared with the module that
implements it, imported when a run first builds that strategy."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.errors import FedmmError
from fedmm.options import opt
from fedmm.registry import STRATEGIES


@dataclass
class FedMAPConfig:
    name: str = opt("fedmap", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    variant: str = opt(
        "fixed",
        "fixed | original: the published FedOps rules point by point (README: FedMAP, the two variants)",
    )
    aggregator_path: str = opt(
        "",
        '"" = <run_dir>/aggregator.safetensors; a .pth file is read and written in the original\'s format '
        "(a torch state dict of the student)",
    )
    input_dim: int = opt(10, "client features the aggregator reads (FedMAP's 10)")
    hidden_dim: int = opt(16, "hidden units of the aggregator network (the student)")
    aggregator_lr: float = opt(0.001, "the student's learning rate when distilled toward the teacher")
    entropy_coeff: float = opt(
        0.01, "weight of the entropy bonus that keeps the student's weights from collapsing onto one client"
    )
    n_trials_per_round: int = opt(4, "candidate weightings the teacher search scores each round")
    perf_mix_lambda: float = opt(
        0.7, "share of performance in the teacher's mix of performance and the other client features"
    )
    z_clip: float = opt(3.0, "client features are z-scored and clipped to +-z_clip")
    client_val_fraction: float = opt(0.1, "the slice of each client's data it scores itself on (not trained on)")
    use_student: bool = opt(True, "learn the student aggregator (off: the teacher's weights are used every round)")
    student_warmup: int = opt(5, "rounds 1..warmup (variant=original: 1..warmup-1) cap the student's share at 0.25")
    student_win_needed: int = opt(3, "consecutive passing rounds before the student dominates")
    gate_delta: float = opt(0.002, "the student passes when its score is at most this far below the teacher's")
    gate_eta: float = opt(0.2, "trust-region step: beta = min(1, eta / sqrt(2 KL(teacher || student)))")

    def __post_init__(self) -> None:  # checked when the configuration is composed, before anything runs
        if self.variant not in ("fixed", "original"):
            raise FedmmError(f"strategy.variant must be fixed or original (got '{self.variant}')")


STRATEGIES.declare("fedmap", FedMAPConfig, "fedmm.fl.strategy.fedmap")
