"""The run-level schema. Group nodes (task, model, strategy, runtime) are validated against the dataclass their
registry entry declares, so user-registered components get the same checks as built-in ones."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

PRECISIONS = ("fp32", "bf16", "fp16")  # the `precision` values (autocast dtypes on a GPU)


@dataclass(frozen=True)
class Bound:
    """The allowed range of a numeric option: low <= x (or low < x with `low_open`), x <= high, finite."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False

    def text(self, integer: bool) -> str:
        num = lambda x: f"{int(x):,}" if float(x).is_integer() else f"{x:g}"
        parts = [f"{'>' if self.low_open else '>='} {num(self.low)}"] if self.low is not None else []
        parts += [f"<= {num(self.high)}"] if self.high is not None else []
        return ("an integer " if integer else "a finite number ") + " and ".join(parts)

    def holds(self, x: float) -> bool:
        return (
            math.isfinite(x)
            and (self.low is None or (x > self.low if self.low_open else x >= self.low))
            and (self.high is None or x <= self.high)
        )


# Every bounded run-level option, in one place: composition checks each (null stays allowed where the type is
# Optional). Group options (task.*, model.*, strategy.*, runtime.*) are checked by their own component.
BOUNDS = {
    "rounds": Bound(1),
    "local_epochs": Bound(1),
    "epochs": Bound(1),
    "batch_size": Bound(1),
    "eval_batch_size": Bound(1),
    "num_clients": Bound(1, 1_000_000),
    "clients_per_round": Bound(1),
    "client_fraction": Bound(0, 1, low_open=True),
    "min_clients": Bound(1),
    "lr": Bound(0, low_open=True),
    "weight_decay": Bound(0),
    "grad_accum_steps": Bound(1),
    "lr_warmup_rounds": Bound(0),
    "seed": Bound(0, 2**32 - 1),
    "max_train_samples": Bound(2),
    "max_eval_samples": Bound(1),
    "eval_every": Bound(1),
    "keep_checkpoints": Bound(0),
    "threads": Bound(0, 4096),
    "partition.alpha": Bound(0, low_open=True),
    "partition.min_size": Bound(1),
    "partition.max_tries": Bound(1),
    "modality.missing_rate": Bound(0, 1),
    "compression.block_size": Bound(1),
    "attack.scale": Bound(),
    "attack.std": Bound(0),
    "attack.start_round": Bound(1),
    "privacy.clip_norm": Bound(0, low_open=True),
    "privacy.noise_multiplier": Bound(0, low_open=True),
    "privacy.delta": Bound(0, 1, low_open=True),
    "privacy.target_epsilon": Bound(0, low_open=True),
    "privacy.noise_seed": Bound(0, 2**63 - 1),
    "privacy.secagg_shares": Bound(0, low_open=True),
    "privacy.secagg_threshold": Bound(0, low_open=True),
    "privacy.secagg_clip_range": Bound(0, low_open=True),
    "privacy.secagg_quantization": Bound(2, 2**30),
    "launcher.jobs": Bound(1, 1024),
    "launcher.gpus_per_job": Bound(0),
    "launcher.cpus_per_job": Bound(1),
    "launcher.mem_gb": Bound(0, low_open=True),
    "launcher.timeout_min": Bound(1),
    "launcher.max_parallel": Bound(0),
}


@dataclass
class PartitionConfig:
    name: str = "iid"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration: small = skewed
    min_size: int = 2  # every client gets at least this many training examples (redraws, then an error)
    max_tries: int = 100


@dataclass
class ModalityConfig:
    text_only: List[int] = field(default_factory=list)  # client indices that have no images, e.g. [2]
    image_only: List[int] = field(default_factory=list)  # client indices that have no text, e.g. [3]
    missing_rate: float = 0.0  # fraction of the other clients that lose one modality (chosen by seed)
    drop: str = "random"  # which modality those clients lose: image | text | random


@dataclass
class CompressionConfig:
    kind: str = "none"  # none | fp16 | bf16 | int8 | int8_block: how clients send their update (the delta)
    block_size: int = 256  # values per scale, int8_block
    error_feedback: bool = True  # clients add what their previous messages lost before compressing


@dataclass
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg, fedmm.fl.privacy) and secure aggregation (Flower's SecAgg+)."""

    name: str = "none"  # none | dp: clip every client's update delta and add Gaussian noise to their sum
    mode: str = "central"  # central: the server clips and adds the noise (trusted server) | local: each client
    # clips and adds its share of the noise before sending (distributed DP; what secure aggregation needs)
    clip_norm: float = 1.0  # C: the L2 bound on each client's update delta, over all its travelling tensors
    noise_multiplier: float = 1.0  # z: the noise on the sum of clipped deltas has std z * C
    target_epsilon: Optional[float] = None  # when set, z is solved for: the planned rounds end at this epsilon
    delta: float = 1e-5  # the delta epsilon is reported at; keep it well below 1 / num_clients
    noise_seed: Optional[int] = None  # null: the noise comes from a secret key; a number makes it reproducible,
    # and removable by anyone who knows it: for experiments only
    secure_aggregation: bool = False  # runtime=flower: the server sees only the sum of updates (SecAgg+)
    secagg_shares: float = 3  # Flower's num_shares: a count (> 2), or a fraction of the sampled clients (<= 1)
    secagg_threshold: float = 2  # Flower's reconstruction_threshold: shares needed to rebuild a dropped client's
    # masks (a count, or a fraction of secagg_shares); clients may drop until fewer than this remain
    secagg_clip_range: float = 8.0  # Flower's clipping_range: each delta value is clipped to +-this before
    # quantization
    secagg_quantization: int = 4194304  # Flower's quantization_range: integer levels over [-clip, clip] (2**22)


@dataclass
class TrackingConfig:
    """Experiment tracking with the real libraries (fedmm.experiment.tracking); `tracking=[a,b]` is short for
    `tracking.to=[a,b]`."""

    to: List[str] = field(default_factory=list)  # tensorboard and/or mlflow ([] = off; pip install 'fedmm[tracking]')
    mlflow_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///<the run's parent folder>/mlflow.db
    experiment: str = "fedmm"  # the MLflow experiment the run is logged under


TRACKERS = ("tensorboard", "mlflow")


@dataclass
class LauncherConfig:
    """Where the jobs of a sweep (`-m`) run (fedmm.launch): here one after another, here several at once, or on a
    Slurm cluster through submitit. Each job is the same `fedmm run` command either way."""

    name: str = "local"  # local: on this machine | slurm: each job a Slurm job (pip install 'fedmm[slurm]')
    jobs: int = 1  # local: jobs at once (> 1: each in its own process, torch's CPU threads divided between them)
    cluster: str = "slurm"  # slurm: sbatch | local: submitit's local executor (the same path, on this machine)
    partition: str = ""  # the Slurm partition ("" = the cluster's default)
    account: str = ""  # the Slurm account to charge ("" = yours by default)
    qos: str = ""  # the Slurm quality of service ("" = the default)
    gpus_per_job: int = 0  # GPUs each job asks for
    cpus_per_job: int = 4  # CPU cores each job asks for
    mem_gb: float = 16.0  # memory each job asks for
    timeout_min: int = 120  # wall-time limit of each job
    max_parallel: int = 0  # at most this many jobs of the sweep run at once on the cluster (0 = no limit)
    folder: str = ""  # submitit's job scripts and logs ("" = <sweep folder>/.submitit)
    additional: Dict[str, Any] = field(default_factory=dict)  # further sbatch options, e.g. {constraint: a100}


LAUNCHERS = ("local", "slurm")
PRIVACY = ("none", "dp")
PRIVACY_MODES = ("central", "local")
ATTACKS = ("none", "nan", "inf", "scale", "sign_flip", "gaussian", "label_flip", "shape")
NORM_BOUNDS = ("clip", "reject")


@dataclass
class AttackConfig:
    """Simulated Byzantine clients (robustness research and tests): applied inside the chosen clients after local
    training, before the update is serialised, so it travels the real wire path of every runtime."""

    name: str = "none"  # none | nan | inf | scale | sign_flip | gaussian | label_flip | shape
    clients: List[int] = field(default_factory=list)  # the client ids that misbehave
    scale: float = 1e6  # scale: the delta is multiplied by it; sign_flip: the flipped delta too, when > 0
    std: float = 1.0  # gaussian: the update is the global model plus N(0, std^2) noise
    start_round: int = 1  # the first round in which the clients misbehave


@dataclass
class Schema:
    task: Any = MISSING
    model: Any = MISSING
    strategy: Any = MISSING
    runtime: Any = MISSING
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    modality: ModalityConfig = field(default_factory=ModalityConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # Bound on each client's update norm (L2 over the delta of all its travelling tensors): null = off, a number,
    # or auto = AUTO_NORM_MULTIPLE (fedmm.fl.validation) x the round's median update norm
    max_update_norm: Optional[Any] = None
    norm_bound: str = "clip"  # clip (scale the delta down to the bound) | reject (drop the update)
    # Python modules imported before the configuration is composed, so that the tasks, backends, strategies and
    # runtimes they register are selectable (sites import them too); installed packages can use the entry-point
    # group fedmm.plugins instead
    plugins: List[str] = field(default_factory=list)
    num_clients: Optional[int] = None  # default 4; tasks with per-site folders (mmimdb): one per folder
    clients_per_round: Optional[int] = None  # a count; when null, client_fraction of num_clients
    client_fraction: float = 1.0
    min_clients: int = 1  # a round needs at least this many successful replies
    rounds: int = 5
    local_epochs: int = 1
    epochs: Optional[int] = None  # centralized only; default rounds * local_epochs (same sample-epochs)
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (decays the clients' lr to lr/10 over the rounds)
    lr_warmup_rounds: int = 0  # rounds (centralized: epochs) of linear warm-up before the schedule
    weight_decay: float = 0.01  # AdamW's
    grad_accum_steps: int = 1  # batches per optimizer step (effective batch = batch_size x grad_accum_steps)
    device: str = "auto"  # auto (a GPU when there is one) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast for training and evaluation on a GPU (CPU stays fp32)
    seed: int = 42
    max_train_samples: Optional[int] = None  # subsample the training split before partitioning
    max_eval_samples: Optional[int] = None  # subsample the server's validation and test splits
    eval_every: int = 1  # server evaluation every k rounds (and always after the last)
    keep_checkpoints: int = 3  # per-round checkpoints kept (0 = all)
    output_dir: Optional[str] = None  # default runs/<timestamp>
    resume: Optional[str] = None  # a run directory to continue after its last completed round
    threads: int = 0  # torch CPU threads (0 = torch's default)
    progress: bool = True  # progress bars (also off when stderr is not a terminal)
