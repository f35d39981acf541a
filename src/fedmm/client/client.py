"""A federated client: global parameters and its round's `FitInstructions` in, an `Update` out.

`ClientTrainer` owns one model instance and reuses it for every client it serves (load global -> train -> extract),
which is what lets one process simulate hundreds of clients and keeps a deployed client's model warm across rounds.

What the client does besides training comes from its strategy's `ClientHook` (FedProx's proximal term, FedMAP's
self-scoring), built from the instructions' `strategy_options`, so a strategy's client side lives in the strategy's
own module. `pos_weight` (a multilabel task's option) weights the loss by the client's own label frequencies: a
site knows its own data, not the federation's. A compressed update is the delta, with the client's error-feedback
residual kept in `ClientState`. Under local DP (`privacy.mode=local`) the update is clipped and noised here, before
it leaves the site (`fedmm.fl.privacy.privatize`).

An `evaluate` request (client_eval) scores the global model, and the site's personal one (fedmm.client.personal),
on the site's own test data and returns only the figures and the example count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from fedmm.backends.base import Backend
from fedmm.client.attacks import attack_update, attacking, flip_labels
from fedmm.client.personal import KEEPS_TENSORS, PERSONAL
from fedmm.client.state import ClientState
from fedmm.config.schema import AttackConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.fl.compression import compress_update
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.privacy import privatize
from fedmm.fl.strategy.base import ClientHook, LocalRound
from fedmm.fl.strategy.fedprox import ProximalTerm
from fedmm.fl.update import Update
from fedmm.modelops import get_params, set_params
from fedmm.params import Params, params_from_bytes, split_strategy_tensors
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
        self._initial: Params = {}  # the personal tensors' initial values (fedper, fedbn), taken before any training

    def _train(self, cid: int, data: MultimodalDataset, ins: FitInstructions, epochs: int, rnd: int, **kw) -> dict:
        return train_epochs(
            self.model,
            self.backend,
            data,
            epochs=epochs,
            batch_size=ins.batch_size,
            lr=ins.lr,
            weight_decay=ins.weight_decay,
            optimizer_name=ins.optimizer,
            seed=client_seed(ins.seed, rnd, cid),
            desc=f"client {cid}",
            progress=self.progress,
            grad_accum_steps=ins.grad_accum_steps,
            precision=ins.precision,
            **kw,
        )

    def _initial_local(self, ins: FitInstructions) -> Params:
        """The local tensors' initial values (fedper, fedbn): taken from the model the first time this process asks,
        before it loads any site's copy into the model (which the embedded runtime's clients share), and the same at
        every site (the model is built by seed)."""
        if not self._initial:
            self._initial = get_params(self.model, ins.local_keys)
        return self._initial

    def _personal(self, cid: int, ins: FitInstructions, through: bool = False) -> Optional[Params]:
        """This site's personal tensors as of round `ins.round` (before it, or `through` it); fedper / fedbn
        start from the initial values, ditto from the global model (None)."""
        initial = self._initial_local(ins) if ins.personalize in KEEPS_TENSORS else None  # before any copy is loaded
        stored = self.state.load(PERSONAL, cid, ins.round, through=through)
        return initial if stored is None else stored

    def _ditto(self, cid: int, data: MultimodalDataset, received: Params, ins: FitInstructions) -> None:
        """Ditto's personal step: the site's personal model trained on its data, pulled toward `received`."""
        set_params(self.model, received)
        pull = ProximalTerm({"prox_mu": ins.personal_lam})
        pull.before_training(LocalRound(cid, self.model, data, None, ins, score=None))  # anchored at the global
        personal = self._personal(cid, ins)
        if personal is not None:
            set_params(self.model, personal)
        self._train(cid, data, ins, ins.local_epochs, ins.round, on_step=pull.on_step)
        self.state.save(PERSONAL, cid, ins.round, get_params(self.model, list(received)))

    def evaluate(
        self,
        cid: int,
        data: MultimodalDataset,
        test: Optional[MultimodalDataset],
        payload: bytes,
        ins: FitInstructions,
    ) -> Update:
        """client_eval: the global model's figures on `test` (the site's own held-out data), and with personalization
        its personal model's as `personal_<name>`; no tensors."""
        if test is None or len(test) == 0:
            return Update(client_id=cid, params={}, num_examples=0, modalities=data.modalities)
        received = split_strategy_tensors(params_from_bytes(payload))[0]
        set_params(self.model, received)
        if ins.local_keys:  # the global model as the server has it: local keys at their initial values
            set_params(self.model, self._initial_local(ins))
        metrics = self._evaluate(test, ins)
        personal = None
        if ins.personalize == "finetune":
            self._train(cid, data, ins, ins.personal_epochs, ins.round + 1)
            personal = self._evaluate(test, ins)
        elif ins.personalize != "none":
            own = self._personal(cid, ins, through=True)
            if own is not None:
                set_params(self.model, own)
            personal = self._evaluate(test, ins)
        if personal is not None:
            metrics.update({f"personal_{k}": v for k, v in personal.items()})
        return Update(client_id=cid, params={}, num_examples=len(test), metrics=metrics, modalities=data.modalities)

    def _evaluate(self, test: MultimodalDataset, ins: FitInstructions) -> dict[str, float]:
        return self.backend.evaluate(
            self.model, test, tuple(ins.eval_metrics), ins.batch_size, zero_division=ins.zero_division
        )

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
        received, from_server = split_strategy_tensors(params_from_bytes(payload))
        set_params(self.model, received)
        if ins.local_keys:  # fedper / fedbn: this site's own copy of the local tensors
            set_params(self.model, self._personal(cid, ins))
        hook = client_hook(ins)
        run = LocalRound(
            cid=cid,
            model=self.model,
            train=data,
            val=val,
            instructions=ins,
            score=lambda d, metric: self._score(d, metric, ins),
            load_state=lambda kind: self.state.load(kind, cid, ins.round),
            save_state=lambda kind, params: self.state.save(kind, cid, ins.round, params),
            from_server=from_server,
        )
        hook.before_training(run)
        byzantine = attacking(self.attack, cid, ins.round)
        train = flip_labels(run.train) if byzantine and self.attack.name == "label_flip" else run.train
        stats = self._train(
            cid,
            train,
            ins,
            ins.local_epochs,
            ins.round,
            on_step=hook.on_step,
            after_step=hook.after_step,
            pos_weight=positive_weights(train.labels) if ins.pos_weight else None,
        )
        # batches: what strategy.weight_by=steps weighs by (NVFlare's NUM_STEPS_CURRENT_ROUND, epochs x batches);
        # seconds to 0.1 ms, so the timing's text in the reply's header varies by at most 4 characters between runs
        seconds = round(stats["seconds"], 4)
        run.metrics.update(train_loss=stats["train_loss"], seconds=seconds, batches=stats["batches"])
        hook.after_training(run)
        if ins.local_keys:
            self.state.save(PERSONAL, cid, ins.round, get_params(self.model, ins.local_keys))
        local = set(ins.local_keys)
        keys = [k for k in self.backend.client_keys(self.model, data.modalities) if k not in local]
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
        if ins.personalize == "ditto":
            self._ditto(cid, train, received, ins)
        return Update(
            client_id=cid,
            params=params,
            num_examples=len(train) if run.num_examples is None else run.num_examples,
            metrics=run.metrics,
            modalities=data.modalities,
            compression=compression,
            strategy_params=run.to_server,
        )

    def fit_bytes(
        self,
        cid: int,
        data: MultimodalDataset,
        payload: bytes,
        instructions: Union[FitInstructions, dict],
        val: Optional[MultimodalDataset] = None,
        test: Optional[MultimodalDataset] = None,
    ) -> bytes:
        """The reply to a round's request, fit or evaluate, as the bytes a runtime carries back. `test` is the
        site's own test data (its validation rows stand in when it has none)."""
        ins = instructions if isinstance(instructions, FitInstructions) else FitInstructions.from_json(instructions)
        if ins.task == "evaluate":
            return self.evaluate(cid, data, test if test is not None else val, payload, ins).to_bytes()
        return self.fit(cid, data, payload, ins, val).to_bytes()
