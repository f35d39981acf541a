"""Train and evaluate one model on one data set. Deterministic given `seed`: batch order and dropout come from it."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from fedmm.backends.base import Backend
from fedmm.data.dataset import MultimodalDataset
from fedmm.modelops import autocast, batch_indices, to_device
from fedmm.train import SGD_MOMENTUM

# Called before every optimizer step with the trained parameters (gradients set and unscaled): what a strategy's
# client side does to or reads from the gradients (FedProx's proximal term, FedMAP's gradient norm).
StepHook = Callable[[list[torch.nn.Parameter]], None]


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, name: str = "adamw", momentum: float = SGD_MOMENTUM
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # fused: one kernel for all parameters instead of a Python loop over them
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def train_epochs(
    model: torch.nn.Module,
    backend: Backend,
    data: MultimodalDataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    optimizer: Optional[torch.optim.Optimizer] = None,
    optimizer_name: str = "adamw",
    on_step: Optional[StepHook] = None,
    after_step: Optional[StepHook] = None,
    pos_weight: Optional[np.ndarray] = None,
    grad_accum_steps: int = 1,
    precision: str = "fp32",
) -> dict[str, float]:
    """AdamW (or SGD with momentum, `optimizer_name`) for `epochs` passes over `data`, on the model's device. Without
    `optimizer`, a fresh one: federated clients keep no optimizer state between rounds; the centralized baseline
    passes its own to keep it across epochs.

    `on_step` sees (and may change) the gradients of the trained parameters before every optimizer step;
    `after_step` sees the parameters right after it, their gradients still set (SCAFFOLD corrects them there).
    `pos_weight` (multilabel, per label) weights the positive terms of the loss (see `positive_weights`).
    `grad_accum_steps` batches make one optimizer step (their gradients averaged; an epoch's last, shorter group
    steps too). `precision` bf16 / fp16 autocasts on a GPU (fp16 with a gradient scaler).
    """
    t0 = time.perf_counter()
    backend.prepare(model, data)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    opt = optimizer or make_optimizer(model, lr, weight_decay, optimizer_name)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
    trained = [p for p in model.parameters() if p.requires_grad]
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32, device=device)
    model.train()
    total, seen, steps = 0.0, 0, 0
    n_batches = epochs * ((len(data) + batch_size - 1) // batch_size)

    def step() -> None:
        nonlocal steps
        if scaler is not None:
            scaler.unscale_(opt)
        if on_step is not None:
            on_step(trained)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if after_step is not None:
            after_step(trained)
        opt.zero_grad(set_to_none=True)
        steps += 1

    opt.zero_grad(set_to_none=True)
    with tqdm(total=n_batches, desc=desc, leave=False, disable=not progress or None, unit="batch") as bar:
        for _ in range(epochs):
            batches = list(batch_indices(len(data), batch_size, rng))
            for b, idx in enumerate(batches):
                batch = to_device(backend.collate(data, idx), device)
                with autocast(device, precision):
                    loss, _ = backend.loss(model, batch, pos_weight=pw)
                group = min(grad_accum_steps, len(batches) - (b - b % grad_accum_steps))  # this step's batches
                scaled = loss / group
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                if (b + 1) % grad_accum_steps == 0 or b + 1 == len(batches):
                    step()
                total += loss.item() * len(idx)
                seen += len(idx)
                bar.update()
    return {
        "train_loss": total / max(seen, 1),
        "steps": float(steps),
        "batches": float(n_batches),
        "seconds": time.perf_counter() - t0,
    }


def positive_weights(labels: np.ndarray) -> np.ndarray:
    """Per label, negatives / positives of multi-hot `labels`: BCE's `pos_weight`, which makes a rare genre's few
    positives count as much as its many negatives. A label without positives gets negatives / 1 (it has no positive
    term to weight, so the value does not matter)."""
    labels = np.asarray(labels, dtype=np.float64)
    pos = labels.sum(axis=0)
    return ((len(labels) - pos) / np.maximum(pos, 1.0)).astype(np.float32)
