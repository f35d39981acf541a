"""The run-level schema. Group nodes (task, model, strategy, runtime) are validated against the dataclass their
registry entry declares, so user-registered components get the same checks as built-in ones."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING
from fedmm.options import opt

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
    "partition.classes_per_client": Bound(1),
    "modality.missing_rate": Bound(0, 1),
    "modality.sample_missing_image": Bound(0, 1),
    "modality.sample_missing_text": Bound(0, 1),
    "noise.label_rate": Bound(0, 1),
    "noise.missing_label_rate": Bound(0, 1),
    "compression.block_size": Bound(1),
    "attack.scale": Bound(),
    "attack.std": Bound(0),
    "attack.start_round": Bound(1),
    "personalize.epochs": Bound(1),
    "personalize.lam": Bound(0),
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
    "early_stop.patience": Bound(0),
    "early_stop.min_delta": Bound(0),
}


PARTITIONS = ("iid", "dirichlet", "shard", "linear", "exponential", "roundrobin")  # fedmm.data.partition's


@dataclass
class PartitionConfig:
    """How a task's training split is dealt to the clients (fedmm.data.partition)."""

    name: str = opt(
        "iid",
        "iid (shuffled deal) | dirichlet (label skew) | shard (each client holds classes_per_client classes) | "
        "linear / exponential (client k of 1..K gets a share proportional to k / e^k) | roundrobin (example i to "
        "client i mod K); a table that names each row's site: task.site_column (natural id)",
    )
    alpha: float = opt(0.5, "Dirichlet concentration: small = skewed")
    classes_per_client: int = opt(2, "shard: the classes each client holds (pathological non-IID)")
    min_size: int = opt(2, "every client gets at least this many training examples (redraws, then an error)")
    max_tries: int = opt(100, "Dirichlet draws tried before giving up on min_size (each with the next seed)")


@dataclass
class ModalityConfig:
    """Which clients lack a modality, on top of what their data lacks (fedmm.data.modality)."""

    text_only: List[int] = opt([], "client indices that have no images, e.g. [2]")
    image_only: List[int] = opt([], "client indices that have no text, e.g. [3]")
    missing_rate: float = opt(0.0, "fraction of the other clients that lose one modality (chosen by seed)")
    drop: str = opt("random", "which modality those clients lose: image | text | random")
    sample_missing_image: float = opt(
        0.0, "the probability that a training sample (of a client with both modalities) lacks its image"
    )
    sample_missing_text: float = opt(
        0.0, "the probability that a training sample (of a client with both modalities) lacks its text"
    )


@dataclass
class NoiseConfig:
    """Label noise on the clients' training data (FedMultimodal's robustness axis; fedmm.data.noise)."""

    label_rate: float = opt(
        0.0,
        "the share of each chosen client's training labels replaced uniformly at random (multilabel: each label bit "
        "flipped with this probability)",
    )
    missing_label_rate: float = opt(
        0.0,
        "the share of each chosen client's training samples without a label: left out of the loss (no backend "
        "learns from unlabelled samples), counted in partition.json",
    )
    clients: Optional[List[int]] = opt(None, "the clients whose labels are noisy or missing (null: all)")


@dataclass
class CompressionConfig:
    """How clients encode their update for the trip to the server (fedmm.fl.compression)."""

    kind: str = opt("none", "none | fp16 | bf16 | int8 | int8_block: how clients send their update (the delta)")
    block_size: int = opt(256, "values per scale, int8_block")
    error_feedback: bool = opt(True, "clients add what their previous messages lost before compressing")


@dataclass
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg, fedmm.fl.privacy) and secure aggregation (Flower's SecAgg+)."""

    name: str = opt("none", "none | dp: clip every client's update delta and add Gaussian noise to their sum")
    mode: str = opt(
        "central",
        "central: the server clips and adds the noise (trusted server) | local: each client clips and adds its "
        "share of the noise before sending (distributed DP; what secure aggregation needs)",
    )
    clip_norm: float = opt(1.0, "C: the L2 bound on each client's update delta, over all its travelling tensors")
    noise_multiplier: float = opt(1.0, "z: the noise on the sum of clipped deltas has std z * C")
    target_epsilon: Optional[float] = opt(None, "when set, z is solved for: the planned rounds end at this epsilon")
    delta: float = opt(1e-5, "the delta epsilon is reported at; keep it well below 1 / num_clients")
    noise_seed: Optional[int] = opt(
        None,
        "null: the noise comes from a secret key; a number makes it reproducible, and removable by anyone who "
        "knows it: for experiments only",
    )
    secure_aggregation: bool = opt(False, "runtime=flower: the server sees only the sum of updates (SecAgg+)")
    secagg_shares: float = opt(3, "Flower's num_shares: a count (> 2), or a fraction of the sampled clients (<= 1)")
    secagg_threshold: float = opt(
        2,
        "Flower's reconstruction_threshold: shares needed to rebuild a dropped client's masks (a count, or a "
        "fraction of secagg_shares); clients may drop until fewer than this remain",
    )
    secagg_clip_range: float = opt(
        8.0, "Flower's clipping_range: each delta value is clipped to +-this before quantization"
    )
    secagg_quantization: int = opt(4194304, "Flower's quantization_range: integer levels over [-clip, clip] (2**22)")


@dataclass
class TrackingConfig:
    """Experiment tracking with the real libraries (fedmm.experiment.tracking); `tracking=[a,b]` is short for
    `tracking.to=[a,b]`."""

    to: List[str] = opt([], "tensorboard and/or mlflow ([] = off; pip install 'fedmm[tracking]')")
    mlflow_uri: str = opt("", '"" = $MLFLOW_TRACKING_URI, else sqlite:///<the run\'s parent folder>/mlflow.db')
    experiment: str = opt("fedmm", "the MLflow experiment the run is logged under")


TRACKERS = ("tensorboard", "mlflow")


@dataclass
class LauncherConfig:
    """Where the jobs of a sweep (`-m`) run (fedmm.launch): here one after another, here several at once, or on a
    Slurm cluster through submitit. Each job is the same `fedmm run` command either way."""

    name: str = opt("local", "local: on this machine | slurm: each job a Slurm job (pip install 'fedmm[slurm]')")
    jobs: int = opt(1, "local: jobs at once (> 1: each in its own process, torch's CPU threads divided between them)")
    cluster: str = opt("slurm", "slurm: sbatch | local: submitit's local executor (the same path, on this machine)")
    partition: str = opt("", 'the Slurm partition ("" = the cluster\'s default)')
    account: str = opt("", 'the Slurm account to charge ("" = yours by default)')
    qos: str = opt("", 'the Slurm quality of service ("" = the default)')
    gpus_per_job: int = opt(0, "GPUs each job asks for")
    cpus_per_job: int = opt(4, "CPU cores each job asks for")
    mem_gb: float = opt(16.0, "memory each job asks for")
    timeout_min: int = opt(120, "wall-time limit of each job")
    max_parallel: int = opt(0, "at most this many jobs of the sweep run at once on the cluster (0 = no limit)")
    folder: str = opt("", 'submitit\'s job scripts and logs ("" = <sweep folder>/.submitit)')
    additional: Dict[str, Any] = opt({}, "further sbatch options, e.g. {constraint: a100}")


LAUNCHERS = ("local", "slurm")
PRIVACY = ("none", "dp")
PRIVACY_MODES = ("central", "local")
ATTACKS = ("none", "nan", "inf", "scale", "sign_flip", "gaussian", "label_flip", "shape")
NORM_BOUNDS = ("clip", "reject")
CLIENT_EVAL = ("none", "final", "every")
PERSONALIZE = ("none", "finetune", "fedper", "fedbn", "ditto")


@dataclass
class PersonalizeConfig:
    """Each site's own model beside the global one (fedmm.client.personal); personal tensors stay at the site."""

    name: str = opt(
        "none",
        "none | finetune (after the last round each site fine-tunes the global model) | fedper (local_keys stay at "
        "the site) | fedbn (normalisation layers stay at the site) | ditto (a personal model pulled toward the "
        "global one)",
    )
    epochs: int = opt(1, "finetune: passes over the site's training data after the last round")
    local_keys: str = opt(
        "", "fedper: a regex over state-dict keys that never leave the site (empty: the backend's classifier head)"
    )
    lam: float = opt(0.1, "ditto: the pull of the personal model toward the global one, lambda/2 ||w - w_global||^2")


@dataclass
class AttackConfig:
    """Simulated Byzantine clients (robustness research and tests): applied inside the chosen clients after local
    training, before the update is serialised, so it travels the real wire path of every runtime."""

    name: str = opt("none", "none | nan | inf | scale | sign_flip | gaussian | label_flip | shape")
    clients: List[int] = opt([], "the client ids that misbehave")
    scale: float = opt(1e6, "scale: the delta is multiplied by it; sign_flip: the flipped delta too, when > 0")
    std: float = opt(1.0, "gaussian: the update is the global model plus N(0, std^2) noise")
    start_round: int = opt(1, "the first round in which the clients misbehave")


@dataclass
class EarlyStopConfig:
    """End a run whose validation figure stopped improving (fedmm.fl.selection); needs select_best."""

    patience: int = opt(0, "evaluated rounds without an improvement before the run ends (0 = never)")
    min_delta: float = opt(0.0, "a round improves when it is better by more than this (a tie keeps the earlier round)")


SELECT_MODES = ("auto", "max", "min")


@dataclass
class Schema:
    task: Any = MISSING
    model: Any = MISSING
    strategy: Any = MISSING
    runtime: Any = MISSING
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    modality: ModalityConfig = field(default_factory=ModalityConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    select_best: str = opt(
        "",
        '"" = off; a figure of the task (accuracy, macro_f1, loss, ...) or "main" (its first metric): the round '
        "whose global model scores best on the server's validation split is kept as best.safetensors",
    )
    select_mode: str = opt("auto", "auto (min for a loss, else max) | max | min: what better means for select_best")
    max_update_norm: Optional[Any] = opt(
        None,
        "Bound on each client's update norm (L2 over the delta of all its travelling tensors): null = off, a "
        "number, or auto = AUTO_NORM_MULTIPLE (fedmm.fl.validation) x the round's lower median update norm",
    )
    norm_bound: str = opt("clip", "clip (scale the delta down to the bound) | reject (drop the update)")
    plugins: List[str] = opt(
        [],
        "Python modules imported before the configuration is composed, so that the tasks, backends, strategies "
        "and runtimes they register are selectable (remote sites import only those their site policy allows); "
        "installed packages can use the entry-point group fedmm.plugins instead",
    )
    num_clients: Optional[int] = opt(
        None, "default 4; tasks with per-site folders (mmimdb, table with task.root): one per folder"
    )
    clients_per_round: Optional[int] = opt(None, "a count; when null, client_fraction of num_clients")
    client_fraction: float = opt(1.0, "the share of clients sampled each round, when clients_per_round is null")
    min_clients: int = opt(1, "a round needs at least this many successful replies")
    rounds: int = opt(5, "federated rounds (each: sample clients, train locally, aggregate, evaluate)")
    local_epochs: int = opt(1, "passes over its own training data each client makes per round")
    epochs: Optional[int] = opt(None, "centralized only; default rounds * local_epochs (same sample-epochs)")
    batch_size: int = opt(32, "training examples per batch (per client)")
    eval_batch_size: int = opt(256, "examples per batch when evaluating (no gradients, so larger)")
    lr: float = opt(1e-3, "the clients' learning rate (AdamW), before lr_schedule and lr_warmup_rounds")
    lr_schedule: str = opt("constant", "constant | cosine (decays the clients' lr to lr/10 over the rounds)")
    lr_warmup_rounds: int = opt(0, "rounds (centralized: epochs) of linear warm-up before the schedule")
    weight_decay: float = opt(0.01, "the optimizer's (decoupled for AdamW, L2 for SGD)")
    optimizer: str = opt(
        "adamw", "adamw | sgd (momentum 0.9): the clients' optimizer, and the centralized baseline's; fresh each round"
    )
    grad_accum_steps: int = opt(1, "batches per optimizer step (effective batch = batch_size x grad_accum_steps)")
    device: str = opt("auto", "auto (a GPU when there is one) | cpu | cuda | cuda:N")
    precision: str = opt("fp32", "fp32 | bf16 | fp16: autocast for training and evaluation on a GPU (CPU stays fp32)")
    seed: int = opt(
        42, "seeds the partition, the model's initialisation, client sampling and every client's batch order"
    )
    max_train_samples: Optional[int] = opt(None, "subsample the training split before partitioning")
    max_eval_samples: Optional[int] = opt(None, "subsample the server's validation and test splits")
    eval_every: int = opt(1, "server evaluation every k rounds (and always after the last)")
    client_eval: str = opt(
        "final",
        "none | final | every: each site scores the global (and its personal) model on its own held-out data after "
        "the last round, or with every server evaluation; only metrics and counts leave the site",
    )
    keep_checkpoints: int = opt(3, "per-round checkpoints kept (0 = all)")
    output_dir: Optional[str] = opt(None, "default runs/<timestamp>")
    resume: Optional[str] = opt(None, "a run directory to continue after its last completed round")
    threads: int = opt(0, "torch CPU threads (0 = torch's default)")
    progress: bool = opt(True, "progress bars (also off when stderr is not a terminal)")
