"""SCAFFOLD (Karimireddy et al., ICML 2020, "Stochastic Controlled Averaging for Federated Learning"), with the
paper's option II control variates.

On skewed data each client drifts toward its own optimum. SCAFFOLD estimates that drift: the server keeps a control
variate c, each client its own c_i, and every local step is corrected by (c - c_i), the difference between the
federation's and this client's gradient direction:

    after each optimizer step:  y <- y - lr * (c - c_i)                 (only tensors that travel and get a gradient)
    after training (option II): c_i+ = c_i - c + (x - y) / (K * lr)    (x: the global model received, K: its steps)
    the client sends y and delta_c_i = c_i+ - c_i, and keeps c_i+ (fedmm.client.state: resume is exact; c_i itself
    never leaves the site)
    the server:                 x <- the example-weighted mean of the y's (FedAvg), c <- c + (1/N) * sum delta_c_i

N is the number of all clients (the paper's); a client's c_i starts at 0, as c does. The correction is applied after
the optimizer's step, as NVFlare's `PTScaffoldHelper` (`model_update`) and the NIID-Bench code it follows do, so it
works beside AdamW or momentum unchanged; with plain SGD it is the paper's corrected gradient step. The client side
is checked against `PTScaffoldHelper` on the same model, data and lr (tests/test_scaffold_reference.py).

Conventions where the peers differ: NVFlare's controller moves c by the step-weighted *mean* of the sampled clients'
delta_c_i (equal to the paper's rule only when every client takes part with equal weight); fedmm follows the paper.
Only travelling parameters have variates (LoRA adapters, a fusion head; never running statistics, whose mean is
FedAvg's); a tensor a client cannot train (its missing modality) is not corrected and gets no delta_c_i, so its
c_i stays where it was. c travels down with the model every round and delta_c_i up with the update, uncompressed:
SCAFFOLD's doubled traffic, counted in bytes_down / bytes_up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.strategy.base import STRATEGIES, ClientHook, LocalRound, Strategy
from fedmm.fl.strategy.fedavg import stepped_keys, weighted_average
from fedmm.fl.update import Update
from fedmm.options import opt
from fedmm.params import Params

if TYPE_CHECKING:
    import torch

STATE = "scaffold"  # the ClientState kind of c_i


@dataclass
class ScaffoldConfig:
    name: str = opt("scaffold", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


class ControlVariates(ClientHook):
    """The client side: the corrected steps, then c_i's option II update (module docstring)."""

    def before_training(self, run: LocalRound) -> None:
        import torch  # here, not at the top: the configuration imports this module without torch

        self.lr = float(run.instructions.lr)
        kept = run.load_state(STATE) or {}
        self.named = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad and n in run.from_server]
        for n, p in self.named:
            if tuple(run.from_server[n].shape) != tuple(p.shape) or (n in kept and kept[n].shape != p.shape):
                raise FedmmError(f"SCAFFOLD: the control variate for {n[:80]} does not have its shape {tuple(p.shape)}")
        self.ids = {id(p): i for i, (_, p) in enumerate(self.named)}
        self.x = [p.detach().clone() for _, p in self.named]
        self.c = [torch.as_tensor(run.from_server[n], dtype=p.dtype, device=p.device) for n, p in self.named]
        self.c_i = [
            torch.as_tensor(kept[n], dtype=p.dtype, device=p.device) if n in kept else torch.zeros_like(p)
            for n, p in self.named
        ]
        self.correction = [c - ci for c, ci in zip(self.c, self.c_i)]
        self.kept, self.steps, self.touched = kept, 0, set()

    def after_step(self, params: list[torch.nn.Parameter]) -> None:
        import torch

        with torch.no_grad():
            for p in params:
                i = self.ids.get(id(p))
                if i is not None and p.grad is not None:
                    p.add_(self.correction[i], alpha=-self.lr)
                    self.touched.add(i)
        self.steps += 1

    def after_training(self, run: LocalRound) -> None:
        if not self.steps:
            return
        new = dict(self.kept)
        for i in sorted(self.touched):
            n, p = self.named[i]
            c_new = self.c_i[i] - self.c[i] + (self.x[i] - p.detach()) / (self.steps * self.lr)
            new[n] = c_new.cpu().numpy()
            run.to_server[n] = (c_new - self.c_i[i]).cpu().numpy()
        run.save_state(STATE, new)


@STRATEGIES.register("scaffold", ScaffoldConfig)
class Scaffold(Strategy):
    streaming = True
    client_hook = ControlVariates

    def __init__(self, cfg: ScaffoldConfig):
        super().__init__(cfg)
        self.c: dict[str, np.ndarray] = {}

    def downlink(self, rnd: int, global_params: Params) -> Params:
        return {
            k: self.c[k].astype(global_params[k].dtype) if k in self.c else np.zeros_like(global_params[k])
            for k in stepped_keys(global_params, self.ctx.stat_keys)
        }

    def refuses(self, update: Update) -> Optional[str]:
        extra = set(update.strategy_params) - set(update.params)
        return f"sends control variates for tensors it did not send: {sorted(extra)[0]}" if extra else None

    def aggregate(self, rnd: int, global_params: Params, updates: Iterable[Update]) -> Params:
        m = self.federation_size()
        keys = stepped_keys(global_params, self.ctx.stat_keys)
        dc = {k: np.zeros(global_params[k].shape, dtype=np.float64) for k in keys}

        def tapped(stream: Iterable[Update]) -> Iterator[tuple[Params, float]]:
            for u in stream:
                for k, v in u.strategy_params.items():
                    if k in dc:
                        dc[k] += v.astype(np.float64)
                yield u.params, float(u.num_examples)

        out = weighted_average(global_params, tapped(updates))
        c = {k: self.c.get(k, np.zeros_like(dc[k])) + dc[k] / m for k in keys}
        if not all(np.isfinite(v).all() for v in c.values()):
            raise ValueError(f"round {rnd}: non-finite SCAFFOLD control variate; it is left as it was")
        self.c = c
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"c": dict(self.c)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.c = {k: np.asarray(a, dtype=np.float64) for k, a in state.get("c", {}).items()}
