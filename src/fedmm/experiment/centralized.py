"""The centralized baseline: the same task, model and training loop on the union of the clients' training data,
every example with all of its modalities, the reference a federation is measured against. It writes `epoch` where
a federated run writes `round` (`fedmm.record.EpochRecord`), and follows the same learning-rate schedule over
epochs."""

from __future__ import annotations

import math
import time
from typing import Any

from fedmm.config import Settings
from fedmm.console import say
from fedmm.errors import FedmmError
from fedmm.experiment.assemble import assemble
from fedmm.experiment.server import progress_bars, server_metrics, table_metrics
from fedmm.modelops import get_params
from fedmm.record import EpochRecord
from fedmm.experiment.tracking import tracked
from fedmm.report import RoundTable, write_report
from fedmm.rundir import open_run_dir
from fedmm.schedule import scheduled_lr
from fedmm.train.loop import make_optimizer, positive_weights, train_epochs


def train_centralized(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """Train and evaluate every epoch; returns the run directory and the last epoch's record."""
    if settings.privacy.name != "none" or settings.privacy.secure_aggregation:
        raise FedmmError(
            "privacy options protect sites in a federated run; fedmm centralized has none (it is the "
            "non-private reference): drop the privacy options, or use fedmm run"
        )
    parts = assemble(settings, "centralized")
    data, backend, model = parts.data, parts.backend, parts.model
    rundir = open_run_dir(settings.resume, settings.output_dir, "centralized", settings.to_yaml())
    say(f"centralized {settings.task.name}: {len(data.train)} train / {len(data.test)} test examples")
    epochs = settings.epochs or settings.rounds * settings.local_epochs
    table = RoundTable("epoch", table_metrics(data))
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay, settings.optimizer)
    pos_weight = positive_weights(data.train.labels) if data.pos_weight else None
    with tracked(settings, rundir.path) as track:
        for epoch in range(1, epochs + 1):
            t = time.perf_counter()
            for group in optimizer.param_groups:  # the same schedule as the federated clients, over epochs
                group["lr"] = scheduled_lr(settings.lr, epoch, epochs, settings.lr_schedule, settings.lr_warmup_rounds)
            stats = train_epochs(
                model,
                backend,
                data.train,
                epochs=1,
                batch_size=settings.batch_size,
                lr=settings.lr,
                weight_decay=settings.weight_decay,
                seed=settings.seed * 1000 + epoch,
                desc=f"epoch {epoch}/{epochs}",
                progress=progress_bars(settings),
                optimizer=optimizer,
                pos_weight=pos_weight,
                grad_accum_steps=settings.grad_accum_steps,
                precision=settings.precision,
            )
            if not math.isfinite(stats["train_loss"]):
                raise FedmmError(
                    f"epoch {epoch}: the training loss is {stats['train_loss']} (diverged); nothing of "
                    f"this epoch was written; lower lr (now {settings.lr})"
                )
            metrics = server_metrics(model, backend, data, data.test, settings.eval_batch_size)
            record = EpochRecord(
                epoch=epoch,
                num_examples=len(data.train),
                lr=optimizer.param_groups[0]["lr"],
                train_loss=stats["train_loss"],
                eval=metrics,
                seconds=time.perf_counter() - t,
            ).to_json()
            rundir.append_metrics(record)
            rundir.save_global(get_params(model, parts.keys))
            table(record)
            track(record)
        write_report(rundir.path, title=f"fedmm centralized: {settings.task.name} / {settings.model.name}")
    return rundir, rundir.read_metrics()[-1]
