"""The server side of a federated experiment, built once for every runtime: `build_server` assembles it, opens the
run directory (resuming from its last checkpoint), and wires the strategy and the server loop; `Federation.run`
drives the rounds with the runtime's way of reaching clients."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from fedmm import metrics as M
from fedmm.backends.base import Backend
from fedmm.config import Settings
from fedmm.config.load import identity
from fedmm.errors import FedmmError
from fedmm.fl.selection import Selection, resolve_mode
from fedmm.config.schema import CompressionConfig, PrivacyConfig
from fedmm import console
from fedmm.console import say
from fedmm.data.dataset import MultimodalDataset, TaskData
from fedmm.data.summary import format_partition, partition_summary
from fedmm.experiment.assemble import assemble, client_eval_mode
from fedmm.fl.compression import check_kind
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.privacy import Accountant, epsilon, noise_for_epsilon
from fedmm.fl.sampling import num_sampled
from fedmm.fl.server import FitClients, Server, ServerConfig
from fedmm.fl.strategy.base import StrategyContext
from fedmm.fl.validation import Expected
from fedmm.modelops import get_params, set_params
from fedmm.params import Params
from fedmm.experiment.tracking import tracked
from fedmm.report import RoundTable, site_summary_line, write_report
from fedmm.rundir import RunDir, open_run_dir


def server_metrics(
    model: torch.nn.Module, backend: Backend, data: TaskData, split: MultimodalDataset, batch_size: int
) -> dict[str, float]:
    """Loss and the task's metrics on `split`; with `tune_thresholds`, also `<metric>_tuned` at per-label
    thresholds tuned on the validation split (never on the split being scored)."""
    zd = data.zero_division
    if not data.tune_thresholds or split is data.val:
        return backend.evaluate(model, split, data.metrics, batch_size, zero_division=zd)
    loss, logits = backend.predict(model, split, batch_size)
    out = {"loss": loss, **M.compute(data.metrics, logits, split.labels, zero_division=zd)}
    _, val_logits = backend.predict(model, data.val, batch_size)
    thresholds = M.tune_thresholds(M.sigmoid(val_logits), data.val.labels)
    tuned = M.compute(data.metrics, logits, split.labels, thresholds, zero_division=zd)
    out.update({f"{k}_tuned": v for k, v in tuned.items()})
    return out


def table_metrics(data: TaskData) -> tuple[str, ...]:
    """The metrics the terminal table shows (metrics.jsonl has all of them)."""
    return data.metrics + ((f"{data.metrics[0]}_tuned",) if data.tune_thresholds else ())


def progress_bars(settings: Settings) -> bool:
    return bool(settings.progress) and sys.stderr.isatty() and not console.QUIET


@dataclass
class Federation:
    """The server's side of one run: its data, clients (the embedded runtime trains them here; remote runtimes
    only count them), the one model instance, and the server loop positioned at `start_round`."""

    settings: Settings
    rundir: RunDir
    data: TaskData
    clients: list[MultimodalDataset]
    client_val: list[Optional[MultimodalDataset]]  # each site's own validation rows, when the task has them
    client_test: list[Optional[MultimodalDataset]]  # each site's own test data (client_eval), when it has some
    backend: Backend
    model: torch.nn.Module
    server: Server
    params: Params
    start_round: int
    progress: bool
    identity: dict[str, Any]  # the settings every checkpoint records and a resume must match

    def run(self, fit_clients: FitClients) -> dict[str, Any]:
        """The remaining rounds, then report.md; returns the last round's record."""
        if self.start_round > self.settings.rounds:
            say(
                f"nothing to do: {self.rundir.path} already completed {self.start_round - 1} rounds "
                f"(rounds={self.settings.rounds}); pass rounds=N to continue further"
            )
        table = RoundTable("round", table_metrics(self.data))
        s = self.settings
        with tracked(s, self.rundir.path) as track:

            def on_round(record: dict[str, Any]) -> None:
                table(record)
                if record.get("client_eval"):
                    say(site_summary_line(record))
                track(record)

            self.params = self.server.run(
                self.rundir, self.params, self.start_round, fit_clients, on_round=on_round, identity=self.identity
            )
            records = self.rundir.read_metrics()
            write_report(self.rundir.path, title=f"fedmm run: {s.task.name} / {s.model.name} / {s.strategy.name}")
        return records[-1] if records else {}


def instructions(settings: Settings, data: TaskData, local_keys: tuple[str, ...] = ()) -> FitInstructions:
    """What every client is told, before the schedule (lr) and the strategy adjust it for a round."""
    p = settings.personalize
    return FitInstructions(
        round=0,
        seed=settings.seed,
        lr=float(settings.lr),
        local_epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        weight_decay=settings.weight_decay,
        optimizer=settings.optimizer,
        grad_accum_steps=settings.grad_accum_steps,
        precision=settings.precision,
        pos_weight=data.pos_weight,
        zero_division=data.zero_division,
        compression=settings.typed("compression", CompressionConfig),
        strategy=settings.strategy.name,
        eval_metrics=list(data.metrics),
        personalize=p.name,
        personal_epochs=p.epochs,
        personal_lam=float(p.lam),
        local_keys=list(local_keys),
    )


def resume_point(rundir: RunDir, settings: Settings):
    """The newest intact checkpoint of the run `settings` resume, after checking that they still describe the same
    experiment and do not end before it: before anything in the folder changes."""
    recorded = max((r.get("round", 0) for r in rundir.read_metrics()), default=0)  # a damaged line stops here
    ckpt = rundir.latest_checkpoint(up_to=recorded)  # a round whose record was lost is computed again
    if ckpt is None:
        return None
    last, _, _, saved = ckpt
    now = identity(settings)
    changed = sorted(k for k in set(saved) | set(now) if saved and saved.get(k) != now.get(k))
    if changed:
        k, more = changed[0], f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise FedmmError(
            f"cannot resume {rundir.path}: its settings changed since round {last} ({k}: "
            f"{saved.get(k)!r} -> {now.get(k)!r}{more}); restore config.yaml, or start a new run"
        )
    if settings.rounds < last:
        raise FedmmError(
            f"cannot resume {rundir.path} with rounds={settings.rounds}: it already completed {last} "
            f"rounds; give rounds={last} or more"
        )
    return ckpt


def model_selection(settings: Settings, data: TaskData) -> Optional[Selection]:
    """select_best / early_stop: what is selected on, on the server's validation split (None when off)."""
    if not settings.select_best:
        return None
    metric = data.metrics[0] if settings.select_best == "main" else str(settings.select_best)
    if metric not in (*data.metrics, "loss"):
        raise FedmmError(
            f"select_best={settings.select_best}: task {settings.task.name} reports {', '.join(data.metrics)} and "
            f"loss; choose one of them, or main"
        )
    if not len(data.val):
        raise FedmmError(
            f"select_best needs the server's validation split, and task {settings.task.name} has none here; give "
            f"it one (synthetic: task.num_val, table: task.val_path or task.val_fraction, MM-IMDb: server_val.csv)"
        )
    es = settings.early_stop
    return Selection(metric, resolve_mode(metric, settings.select_mode), es.patience, float(es.min_delta))


def accountant(settings: Settings, num_clients: int, per_round: int, params: Params) -> Optional[Accountant]:
    """privacy=dp: the run's privacy accountant, its noise multiplier solved for `target_epsilon` when given;
    announces the plan, and warns when the noise will outweigh every update (None without DP). `params`: the
    travelling tensors, whose floating values are clipped and noised."""
    p = settings.typed("privacy", PrivacyConfig)
    if p.name != "dp":
        return None
    values = sum(v.size for v in params.values() if np.issubdtype(v.dtype, np.floating))
    rate = per_round / num_clients
    z = p.noise_multiplier
    if p.target_epsilon is not None:
        z = noise_for_epsilon(p.target_epsilon, rate, settings.rounds, p.delta)
    planned = epsilon([(rate, z)] * settings.rounds, p.delta)
    sampling = "every client every round" if rate >= 1 else f"Poisson sampling q={rate:.4g}"
    say(
        f"privacy: DP-FedAvg, {p.mode} noise, clip_norm={p.clip_norm:g}, noise_multiplier={z:.4g}"
        f"{' (solved for target_epsilon=%g)' % p.target_epsilon if p.target_epsilon is not None else ''}, "
        f"{sampling}; epsilon after {settings.rounds} rounds: {planned:.3f} at delta={p.delta:g}"
    )
    ratio = z * math.sqrt(values) / (rate * num_clients)  # noise norm on the mean over its largest signal, C
    if ratio > 1:
        say(
            f"privacy: the noise on each round's mean update is about {ratio:.0f}x clip_norm (over {values:,} values "
            f"and {rate * num_clients:g} clients per round): expect little learning; client-level DP needs many "
            f"clients (README: Privacy)"
        )
    return Accountant(p.clip_norm, z, p.delta, rate, num_clients, local=p.mode == "local", noise_seed=p.noise_seed)


def say_site_test_data(tests: list, vals: list) -> None:
    """Once, before the rounds: the sites client_eval scores on their val.csv (no test.csv), and those it leaves out."""
    on_val = [k for k, (t, v) in enumerate(zip(tests, vals)) if t is None and v is not None]
    left_out = [k for k, (t, v) in enumerate(zip(tests, vals)) if t is None and v is None]
    if on_val:
        say(f"client_eval: client(s) {', '.join(map(str, on_val))} have no test data (test.csv); they score on val.csv")
    if left_out:
        say(f"client_eval: client(s) {', '.join(map(str, left_out))} have no test or validation data; left out")


def build_server(settings: Settings) -> Federation:
    check_kind(settings.compression.kind, settings.compression.block_size)
    parts = assemble(settings, "server")
    data, clients, backend, model, strategy = parts.data, parts.clients, parts.backend, parts.model, parts.strategy
    per_round = num_sampled(len(clients), settings.clients_per_round, settings.client_fraction, settings.min_clients)
    strategy.check_round_size(per_round)  # before anything is written: a rule that cannot keep its promise
    attackers = (
        [c for c in settings.attack.clients if not 0 <= c < len(clients)] if settings.attack.name != "none" else []
    )
    if attackers:
        raise FedmmError(
            f"attack.clients names client {attackers[0]}, but this experiment has {len(clients)} clients "
            f"(0..{len(clients) - 1}); fix attack.clients"
        )
    selection = model_selection(settings, data)  # before anything is written: a figure the task has
    rundir = open_run_dir(settings.resume, settings.output_dir, "run", settings.to_yaml())
    ckpt = resume_point(rundir, settings) if settings.resume else None
    summary = partition_summary(clients, parts.client_test)
    rundir.write_json("partition.json", summary)
    say(
        f"task {settings.task.name}: {sum(map(len, clients))} train / {len(data.val)} val / {len(data.test)} test "
        f"examples over {len(clients)} clients"
    )
    say(format_partition(summary))
    if client_eval_mode(settings) != "none":
        say_site_test_data(parts.client_test, parts.client_val)
    elif settings.client_eval != "none":
        say(
            "client_eval: off under privacy=dp and secure aggregation (per-site figures fall outside their "
            "guarantees); no data is held out"
        )
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    say(
        f"model {settings.model.name}: trainable {n_train:,} / {n_total:,} ({100 * n_train / n_total:.2f}%) on "
        f"{next(model.parameters()).device}"
    )

    initial_local = get_params(model, list(parts.local_keys))  # personalize=fedper/fedbn: never trained here

    def evaluate_on(split: MultimodalDataset, global_params: Params) -> dict[str, float]:
        """Server-side evaluation with the one model instance the clients also use (the sites' local tensors, which
        the embedded runtime's clients leave in it, at their initial values: the global model has no others)."""
        set_params(model, {**global_params, **initial_local})
        return server_metrics(model, backend, data, split, settings.eval_batch_size)

    param_names = {n for n, _ in model.named_parameters()}
    strategy.setup(
        StrategyContext(
            evaluate_val=(lambda p: evaluate_on(data.val, p)) if len(data.val) else None,
            metric=data.metrics[0],
            stat_keys=frozenset(set(parts.keys) - param_names),
            run_dir=rundir.path,
            seed=settings.seed,
            num_clients=len(clients),
        )
    )
    server_cfg = ServerConfig(
        num_clients=len(clients),
        per_round=per_round,
        min_clients=min(settings.min_clients, per_round),
        rounds=settings.rounds,
        seed=settings.seed,
        eval_every=max(1, settings.eval_every),
        keep_checkpoints=settings.keep_checkpoints,
        lr_schedule=settings.lr_schedule,
        lr_warmup_rounds=settings.lr_warmup_rounds,
        max_update_norm=settings.max_update_norm,
        norm_bound=settings.norm_bound,
        client_eval=client_eval_mode(settings),
    )
    params, start = get_params(model, parts.keys), 1
    privacy = accountant(settings, len(clients), per_round, params)
    local_dp = privacy is not None and privacy.local  # noised clients send every key (fedmm.fl.privacy.privatize)
    expected = {
        cid: Expected(
            keys=None if local_dp else frozenset(backend.client_keys(model, c.modalities)) - set(parts.local_keys),
            modalities=c.modalities,
            max_examples=len(c),
        )
        for cid, c in enumerate(clients)
    }
    server = Server(
        strategy,
        server_cfg,
        evaluate=lambda p: evaluate_on(data.test, p),
        instructions=instructions(settings, data, parts.local_keys),
        expected=expected,
        privacy=privacy,
        selection=selection,
        evaluate_val=lambda p: evaluate_on(data.val, p),
    )
    if settings.resume:
        if ckpt is not None:
            last, params, state, _ = ckpt
            rundir.save_global(params)  # global.safetensors is the newest intact checkpoint's, even if it was lost
            server.load_state_dict(state)
            start = last + 1
            say(f"resuming {rundir.path} after round {last}")
        rundir.set_aside_metrics("round", start - 1)
        rundir.write_text("config.yaml", settings.to_yaml())
    return Federation(
        settings=settings,
        rundir=rundir,
        data=data,
        clients=clients,
        client_val=parts.client_val,
        client_test=parts.client_test,
        backend=backend,
        model=model,
        server=server,
        params=params,
        start_round=start,
        progress=progress_bars(settings),
        identity=identity(settings),
    )
