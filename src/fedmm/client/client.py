"""A federated client: global parameters and its round's `FitInstructions` in, an `Update` out.

`ClientTrainer` owns one model instance and reuses it for every client it serves (load global -> train -> extract),
which is what lets one process simulate hundreds of clients and keeps a deployed client's model warm across rounds.

What the client does besides training comes from its strategy's `ClientHook` (FedProx's proximal term, FedMAP's
self-scoring), built from the instructions' `strategy_options`, so a strategy's client side lives in the strategy's
own module. `pos_weight` (a multilabel task's option) weights the loss by the client's own label frequencies: a
site knows its own data, not the federation's. A compressed update is the delta, with the client's error-feedback
residual kept in `ClientState`. Under local DP (`privacy.mode=local`) the update is clipped and noised here, before
it leaves the site (`fedmm.fl.privacy.privatize`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from fedmm.backends.base import Backend
from fedmm.client.attacks import attack_update, attacking, flip_labels
from fedmm.client.state import ClientState
from fedmm.config.schema import AttackConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.fl.compression import compress_update
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.privacy import privatize
from fedmm.fl.strategy.base import ClientHook, LocalRound
from fedmm.fl.update import Update
from fedmm.modelops import get_params, set_params
from fedmm.params import params_from_bytes
from fedmm.registry import STRATEGIES
from fedmm.train.loop import positive_weights, train_epochs


def client_seed(seed: int, rnd: int, cid: int) -> int:
    """The seed of one client's local training in one round (independent of which process runs it)."""
    return (seed * 1_000_003 + rnd * 10_007 + cid) % (2**31 - 1)


def client_hook(instructions: FitInstructions) -> ClientHook:
    """The strategy's client side for this round (the default hook for strategies that ask nothing)."""
    hook_cls = getattr(STRATEGIES.get(instructions.strategy).factory, "client_hook", ClientHook)
    return hook_cls(instructions.strategy_options)


class ClientTrainer:
    def __init__(
        self,
        backend: Backend,
        model: torch.nn.Module,
        progress: bool = True,
        state_dir: Optional[Path] = None,
        attack: Optional[AttackConfig] = None,
    ):
        self.backend = backend
        self.model = model
        self.progress = progress
        self.state = ClientState(state_dir)  # where this process keeps its clients' state (None: in memory)
        self.attack = attack  # simulated Byzantine behaviour of some clients (fedmm.client.attacks)

    def _score(self, data: MultimodalDataset, metric: str, ins: FitInstructions) -> dict[str, float]:
        return self.backend.evaluate(self.model, data, (metric,), ins.batch_size, zero_division=ins.zero_division)

    def fit(
        self,
        cid: int,
        data: MultimodalDataset,
        payload: bytes,
        instructions: Union[FitInstructions, dict],
        val: Optional[MultimodalDataset] = None,
    ) -> Update:
        """One round of local training. `val` is the site's own validation data, when it has some; `instructions`
        may be their JSON form (as a remote runtime delivers them)."""
        ins = instructions if isinstance(instructions, FitInstructions) else FitInstructions.from_json(instructions)
        received = params_from_bytes(payload)
        set_params(self.model, received)
        hook = client_hook(ins)
        run = LocalRound(
            cid=cid,
            model=self.model,
            train=data,
            val=val,
            instructions=ins,
            score=lambda d, metric: self._score(d, metric, ins),
        )
        hook.before_training(run)
        byzantine = attacking(self.attack, cid, ins.round)
        train = flip_labels(run.train) if byzantine and self.attack.name == "label_flip" else run.train
        stats = train_epochs(
            self.model,
            self.backend,
            train,
            epochs=ins.local_epochs,
            batch_size=ins.batch_size,
            lr=ins.lr,
            weight_decay=ins.weight_decay,
            optimizer_name=ins.optimizer,
            seed=client_seed(ins.seed, ins.round, cid),
            desc=f"client {cid}",
            progress=self.progress,
            on_step=hook.on_step,
            pos_weight=positive_weights(train.labels) if ins.pos_weight else None,
            grad_accum_steps=ins.grad_accum_steps,
            precision=ins.precision,
        )
        run.metrics.update(train_loss=stats["train_loss"], seconds=stats["seconds"])
        hook.after_training(run)
        keys = self.backend.client_keys(self.model, data.modalities)
        params, compression = get_params(self.model, keys), {}
        if byzantine:
            params = attack_update(self.attack, params, received, client_seed(ins.seed, ins.round, cid))
        if ins.dp_clip_norm is not None:  # local DP: clipped and noised here, before anything leaves the site
            rng = np.random.default_rng(None if ins.dp_noise_seed is None else [ins.dp_noise_seed, ins.round, cid])
            params = privatize(params, received, ins.dp_clip_norm, ins.dp_noise_std, rng)
        comp = ins.compression
        if comp.kind != "none":
            residual = self.state.load_residual(cid, ins.round) if comp.error_feedback else None
            params, compression, residual = compress_update(params, received, residual, comp.kind, comp.block_size)
            if comp.error_feedback:
                self.state.save_residual(cid, ins.round, residual)
        return Update(
            client_id=cid,
            params=params,
            num_examples=len(train),
            metrics=run.metrics,
            modalities=data.modalities,
            compression=compression,
        )

    def fit_bytes(
        self,
        cid: int,
        data: MultimodalDataset,
        payload: bytes,
        instructions: Union[FitInstructions, dict],
        val: Optional[MultimodalDataset] = None,
    ) -> bytes:
        return self.fit(cid, data, payload, instructions, val).to_bytes()
