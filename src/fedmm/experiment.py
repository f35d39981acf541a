"""Assemble one experiment from validated settings: data, partition, modalities, backend, model, strategy, server.

A runtime then drives `run_server` with its own way of reaching clients. `run_centralized` trains the same model
with the same loop on the union of the clients' data: the baseline a federation is compared to.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch

from fedmm import metrics as M
from fedmm.backends import BACKENDS
from fedmm.backends.base import Backend, get_params, set_params
from fedmm.config import Settings
from fedmm.data.dataset import MultimodalDataset, TaskData, subsample
from fedmm.data.modality import assign_modalities, client_modalities
from fedmm.data.partition import dirichlet_partition, iid_partition
from fedmm.data.summary import format_partition, partition_summary
from fedmm.data.tasks import load_task
from fedmm.errors import FedmmError
from fedmm.fl.params import Params
from fedmm.fl.sampling import num_sampled
from fedmm.fl.server import FitClients, Server, ServerConfig, scheduled_lr
from fedmm.fl.strategy import STRATEGIES, Strategy, StrategyContext
from fedmm.report import eval_summary, write_report
from fedmm.fl.compression import check_kind
from fedmm.rundir import RunDir
from fedmm.runtime import RUNTIMES
from fedmm.train.loop import evaluate, make_optimizer, positive_weights, predict, resolve_device, train_epochs


def _out(msg: str = "") -> None:
    print(msg, flush=True)


def prepare_output(settings: Settings, kind: str) -> RunDir:
    if settings.resume:
        return RunDir(settings.resume)
    if settings.output_dir:
        path = Path(settings.output_dir).expanduser()
    else:
        path = Path("runs") / (datetime.now().strftime("%Y%m%d-%H%M%S-%f") + ("" if kind == "run" else f"-{kind}"))
    if (path / "metrics.jsonl").exists():
        raise FedmmError(f"{path} already holds a run; choose another output_dir, or continue it with resume={path}")
    rd = RunDir(path).create()
    rd.write_text("config.yaml", settings.to_yaml())
    return rd


DEFAULT_CLIENTS = 4


def load_data(settings: Settings, centralized: bool = False) -> TaskData:
    data = load_task(settings.task, settings.seed, centralized=centralized)
    if data.tune_thresholds and not (data.train.multilabel and len(data.val)):
        raise FedmmError("task.tune_thresholds needs a multilabel task with a server validation split "
                         "(MM-IMDb: server_val.csv next to server_test.csv)")
    if data.pos_weight and not data.train.multilabel:
        raise FedmmError("task.pos_weight is for multilabel tasks (it weights each label's positive term)")
    limit, seed = settings.max_train_samples, settings.seed
    clients = data.clients
    if clients is not None and limit:  # the same share of every site
        total = sum(len(c) for c in clients)
        clients = tuple(subsample(c, max(2, round(limit * len(c) / total)), seed + k) for k, c in enumerate(clients))
    return replace(data, train=subsample(data.train, limit, seed), clients=clients,
                   val=subsample(data.val, settings.max_eval_samples, seed + 1),
                   test=subsample(data.test, settings.max_eval_samples, seed + 2))


def split_clients(settings: Settings, data: TaskData) -> list[MultimodalDataset]:
    """The clients' training data: the task's own sites, or the training split partitioned over num_clients. The
    run's modality settings then take modalities away (on top of what a site lacks)."""
    if data.clients is not None:
        parts, n = list(data.clients), len(data.clients)
        if settings.num_clients not in (None, n):
            raise FedmmError(f"the task's data holds {n} client folders but num_clients={settings.num_clients}; "
                             f"set num_clients={n} or null, or start from experiment=mmimdb, which takes the "
                             f"clients and their modalities from the folders")
    else:
        n, train, p = settings.num_clients or DEFAULT_CLIENTS, data.train, settings.partition
        if p.name == "iid":
            idx = iid_partition(len(train), n, settings.seed)
        elif p.name == "dirichlet":
            idx = dirichlet_partition(train.partition_labels(), n, p.alpha, settings.seed, min_size=p.min_size,
                                      max_tries=p.max_tries)
        else:
            raise FedmmError(f"unknown partition '{p.name}'; choose iid or dirichlet")
        parts = [train.subset(i) for i in idx]
    mods = assign_modalities(n, client_modalities(settings.modality.text_only, settings.modality.image_only),
                             settings.modality.missing_rate, settings.modality.drop, settings.seed)
    empty = [k for k, (part, m) in enumerate(zip(parts, mods)) if not m & part.modalities]
    if empty:
        raise FedmmError(f"client {empty[0]} would have no modality left: its data has only "
                         f"{'+'.join(sorted(parts[empty[0]].modalities))}, and the modality settings take that away")
    return [part.with_modalities(m & part.modalities) for part, m in zip(parts, mods)]


def server_metrics(model: torch.nn.Module, backend: Backend, data: TaskData, split: MultimodalDataset,
                   batch_size: int) -> dict[str, float]:
    """Loss and the task's metrics on `split`; with `tune_thresholds`, also `<metric>_tuned` at per-label
    thresholds tuned on the validation split (never on the split being scored)."""
    if not data.tune_thresholds or split is data.val:
        return evaluate(model, backend, split, data.metrics, batch_size)
    loss, logits = predict(model, backend, split, batch_size)
    out = {"loss": loss, **M.compute(data.metrics, logits, split.labels)}
    _, val_logits = predict(model, backend, data.val, batch_size)
    thresholds = M.tune_thresholds(M.sigmoid(val_logits), data.val.labels)
    out.update({f"{k}_tuned": v for k, v in M.compute(data.metrics, logits, split.labels, thresholds).items()})
    return out


def table_metrics(data: TaskData) -> tuple[str, ...]:
    """The metrics the terminal table shows (metrics.jsonl has all of them)."""
    return data.metrics + ((f"{data.metrics[0]}_tuned",) if data.tune_thresholds else ())


class RoundTable:
    """The per-round table printed in the terminal."""

    def __init__(self, step: str, metric_names: tuple[str, ...]):
        self.step = step
        self.cols = ["train_loss", "eval_loss"] + [f"eval_{m}" for m in metric_names]
        self.printed = False

    def __call__(self, r: dict[str, Any]) -> None:
        federated = self.step == "round"
        if not self.printed:
            head = f"{self.step:>6} " + (f"{'clients':>7} " if federated else "")
            head += " ".join(f"{c:>{max(13, len(c))}}" for c in self.cols)
            _out(head + (f" {'MB up':>8} {'MB down':>8}" if federated else "") + f" {'sec':>6}")
            self.printed = True
        vals = " ".join(f"{r[c]:>{max(13, len(c))}.4f}" if c in r else f"{'':>{max(13, len(c))}}" for c in self.cols)
        comm = f" {r['bytes_up'] / 1e6:>8.2f} {r['bytes_down'] / 1e6:>8.2f}" if federated else ""
        clients = f"{r['num_clients']:>7} " if federated else ""
        _out(f"{r[self.step]:>6} {clients}{vals}{comm} {r['seconds']:>6.1f}")


@dataclass
class Experiment:
    settings: Settings
    rundir: RunDir
    data: TaskData
    clients: list[MultimodalDataset]
    client_val: list[Optional[MultimodalDataset]]  # each site's own validation rows, when the task has them
    backend: Backend
    model: torch.nn.Module
    server: Server
    params: Params
    start_round: int
    progress: bool

    def run_server(self, fit_clients: FitClients) -> dict[str, Any]:
        if self.start_round > self.settings.rounds:
            _out(f"nothing to do: {self.rundir.path} already completed {self.start_round - 1} rounds "
                 f"(rounds={self.settings.rounds}); pass rounds=N to continue further")
        table = RoundTable("round", table_metrics(self.data))
        self.params = self.server.run(self.rundir, self.params, self.start_round, fit_clients, on_round=table)
        records = self.rundir.read_metrics()
        write_report(self.rundir.path, title=f"fedmm run: {self.settings.task.name} / {self.settings.model.name} / "
                                              f"{self.settings.strategy.name}")
        return records[-1] if records else {}


def _setup_torch(settings: Settings) -> None:
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)


def _build_backend(settings: Settings, data: TaskData) -> Backend:
    entry = BACKENDS.get(settings.model.name)
    backend = entry.factory(settings.model, data.train.num_labels, data.train.multilabel)
    backend.precision = settings.precision
    unsupported = [m for m in data.metrics if m not in backend.metrics]
    if unsupported:
        other = ("a generative one such as model=blip_vqa_tiny" if "vqa_accuracy" in unsupported
                 else "a classifier such as model=fusion_tiny")
        raise FedmmError(f"model {settings.model.name} cannot report {', '.join(unsupported)}, which task "
                         f"{settings.task.name} asks for; choose {other}")
    return backend


def travelling_keys(backend: Backend, model: torch.nn.Module, strategy: Strategy) -> list[str]:
    """The trainable keys the strategy lets travel; parameters it keeps at their shared initial values (FFA-LoRA's
    A matrices) are frozen here, so that no client trains them. Every runtime's clients call this too."""
    for name, p in model.named_parameters():
        if p.requires_grad and not strategy.travels(name):
            p.requires_grad_(False)
    return backend.trainable_keys(model)


def build_experiment(settings: Settings) -> Experiment:
    _setup_torch(settings)
    strategy = STRATEGIES.get(settings.strategy.name).factory(settings.strategy)  # checks its config first
    check_kind(settings.compression.kind, settings.compression.block_size)
    rundir = prepare_output(settings, "run")
    data = load_data(settings)
    clients = split_clients(settings, data)
    summary = partition_summary(clients)
    rundir.write_json("partition.json", summary)
    _out(f"task {settings.task.name}: {sum(map(len, clients))} train / {len(data.val)} val / {len(data.test)} test "
         f"examples over {len(clients)} clients")
    _out(format_partition(summary))

    backend = _build_backend(settings, data)
    model = backend.build_model(seed=settings.seed).to(resolve_device(settings.device))
    keys = travelling_keys(backend, model, strategy)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    _out(f"model {settings.model.name}: trainable {n_train:,} / {n_total:,} ({100 * n_train / n_total:.2f}%) on "
         f"{next(model.parameters()).device}")

    def evaluate_on(split: MultimodalDataset, global_params: Params) -> dict[str, float]:
        """Server-side evaluation with the one model instance the clients also use."""
        set_params(model, global_params)
        return server_metrics(model, backend, data, split, settings.eval_batch_size)

    param_names = {n for n, _ in model.named_parameters()}
    strategy.setup(StrategyContext(evaluate_val=(lambda p: evaluate_on(data.val, p)) if len(data.val) else None,
                                   metric=data.metrics[0], stat_keys=frozenset(set(keys) - param_names),
                                   run_dir=rundir.path, seed=settings.seed))
    params, start = get_params(model, keys), 1
    if settings.resume:
        ckpt = rundir.latest_checkpoint()
        if ckpt is not None:
            last, params, state = ckpt
            strategy.load_state_dict(state)
            start = last + 1
            _out(f"resuming {rundir.path} after round {last}")
        rundir.truncate_metrics("round", start - 1)
        rundir.write_text("config.yaml", settings.to_yaml())

    per_round = num_sampled(len(clients), settings.clients_per_round, settings.client_fraction,
                            settings.min_clients)
    server_cfg = ServerConfig(num_clients=len(clients), per_round=per_round,
                              min_clients=min(settings.min_clients, per_round), rounds=settings.rounds,
                              seed=settings.seed, eval_every=max(1, settings.eval_every),
                              keep_checkpoints=settings.keep_checkpoints, lr_schedule=settings.lr_schedule,
                              lr_warmup_rounds=settings.lr_warmup_rounds)
    defaults = dict(lr=settings.lr, local_epochs=settings.local_epochs, batch_size=settings.batch_size,
                    weight_decay=settings.weight_decay, pos_weight=data.pos_weight,
                    grad_accum_steps=settings.grad_accum_steps, precision=settings.precision,
                    compression=settings.compression.kind, compression_block=settings.compression.block_size,
                    error_feedback=settings.compression.error_feedback)
    server = Server(strategy, server_cfg, evaluate=lambda p: evaluate_on(data.test, p), client_defaults=defaults)
    return Experiment(settings=settings, rundir=rundir, data=data, clients=clients,
                      client_val=_client_val(data, clients), backend=backend, model=model,
                      server=server, params=params, start_round=start,
                      progress=bool(settings.progress) and sys.stderr.isatty())


def _client_val(data: TaskData, clients: list[MultimodalDataset]) -> list[Optional[MultimodalDataset]]:
    """Each site's own validation rows, when the task has them, with the modalities the site trains on."""
    return [v.with_modalities(c.modalities) if v is not None else None
            for c, v in zip(clients, data.client_val or [None] * len(clients))]


@dataclass
class Site:
    """What one client holds when it runs apart from the server (a Flower SuperNode, an NVFlare site)."""

    backend: Backend
    model: torch.nn.Module
    train: MultimodalDataset
    val: Optional[MultimodalDataset]


def build_site(settings: Settings, cid: int) -> Site:
    """Client `cid` of this experiment on its own: its share of the data exactly as `split_clients` gives it to the
    embedded runtime, and the model with the strategy's travelling keys trainable, so that both runtimes compute
    the same update for the same global parameters."""
    _setup_torch(settings)
    strategy = STRATEGIES.get(settings.strategy.name).factory(settings.strategy)
    data = load_data(settings)
    clients = split_clients(settings, data)
    if not 0 <= cid < len(clients):
        raise FedmmError(f"partition-id {cid} is out of range: this experiment has {len(clients)} clients "
                         f"(0..{len(clients) - 1}); fix the site's partition-id (Flower: the SuperNode's "
                         f"--node-config, NVFlare: the job's --partition-id)")
    backend = _build_backend(settings, data)
    model = backend.build_model(seed=settings.seed).to(resolve_device(settings.device))
    travelling_keys(backend, model, strategy)
    return Site(backend=backend, model=model, train=clients[cid], val=_client_val(data, clients)[cid])


def run_federated(settings: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    runtime = RUNTIMES.get(settings.runtime.name).factory(settings.runtime)
    if hasattr(runtime, "run_settings"):  # it builds the experiment where its server runs (another process)
        rundir, final = runtime.run_settings(settings)
    else:
        exp = build_experiment(settings)
        rundir, final = exp.rundir, runtime.run(exp)
    _summary(rundir, final, time.perf_counter() - t0)
    return final


def _summary(rundir: RunDir, final: dict[str, Any], seconds: float) -> None:
    evals = eval_summary(final)
    _out(f"done in {seconds:.1f}s: {evals}")
    _out(f"outputs: {rundir.path}/ (metrics.jsonl, global.safetensors, report.md, metrics.png)")


def run_centralized(settings: Settings) -> dict[str, Any]:
    """The same task, model and loop on the union of the clients' training data, every example with all of its
    modalities: the reference a federation is measured against. Writes `epoch` where a federated run writes
    `round`."""
    t0 = time.perf_counter()
    _setup_torch(settings)
    rundir = prepare_output(settings, "centralized")
    data = load_data(settings, centralized=True)
    _out(f"centralized {settings.task.name}: {len(data.train)} train / {len(data.test)} test examples")
    backend = _build_backend(settings, data)
    model = backend.build_model(seed=settings.seed).to(resolve_device(settings.device))
    keys = backend.trainable_keys(model)
    epochs: Optional[int] = settings.epochs or settings.rounds * settings.local_epochs
    table = RoundTable("epoch", table_metrics(data))
    progress = bool(settings.progress) and sys.stderr.isatty()
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    pos_weight = positive_weights(data.train.labels) if data.pos_weight else None
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        for group in optimizer.param_groups:  # the same schedule as the federated clients, over epochs
            group["lr"] = scheduled_lr(settings.lr, epoch, epochs, settings.lr_schedule, settings.lr_warmup_rounds)
        stats = train_epochs(model, backend, data.train, epochs=1, batch_size=settings.batch_size, lr=settings.lr,
                             weight_decay=settings.weight_decay, seed=settings.seed * 1000 + epoch,
                             desc=f"epoch {epoch}/{epochs}", progress=progress, optimizer=optimizer,
                             pos_weight=pos_weight, grad_accum_steps=settings.grad_accum_steps,
                             precision=settings.precision)
        metrics = server_metrics(model, backend, data, data.test, settings.eval_batch_size)
        record = {"epoch": epoch, "num_examples": len(data.train), "lr": optimizer.param_groups[0]["lr"],
                  "train_loss": stats["train_loss"],
                  **{f"eval_{k}": v for k, v in metrics.items()}, "seconds": time.perf_counter() - t}
        rundir.append_metrics(record)
        rundir.save_global(get_params(model, keys))
        table(record)
    write_report(rundir.path, title=f"fedmm centralized: {settings.task.name} / {settings.model.name}")
    final = rundir.read_metrics()[-1]
    _summary(rundir, final, time.perf_counter() - t0)
    return final
