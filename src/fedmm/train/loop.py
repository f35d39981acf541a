"""Train and evaluate one model on one data set. Deterministic given `seed`: batch order and dropout come from it."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from fedmm.backends.base import Backend
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import FedmmError


def batch_indices(n: int, batch_size: int, rng: Optional[np.random.Generator] = None) -> Iterator[np.ndarray]:
    """Consecutive batches of a (shuffled) order. A trailing batch of one joins the batch before it: BatchNorm
    cannot train on a single example, and dropping it would silently lose data."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    for i, s in enumerate(starts):
        yield order[s:starts[i + 1] if i + 1 < len(starts) else n]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, name: str = "adamw",
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # fused: one kernel for all parameters instead of a Python loop over them
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FedmmError(f"device must be auto, cpu, cuda or cuda:N (got '{name}')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FedmmError(f"device={name} but torch sees no GPU here; use device=auto or device=cpu")
    return device


def autocast(device: torch.device, precision: str):
    """Mixed precision on a GPU (bf16 / fp16 autocast); on the CPU everything stays fp32, where autocast is slower."""
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_epochs(model: torch.nn.Module, backend: Backend, data: MultimodalDataset, *, epochs: int,
                 batch_size: int, lr: float, weight_decay: float, seed: int, desc: str = "train",
                 progress: bool = True, optimizer: Optional[torch.optim.Optimizer] = None, prox_mu: float = 0.0,
                 track_grad_norm: bool = False, pos_weight: Optional[np.ndarray] = None, grad_accum_steps: int = 1,
                 precision: str = "fp32") -> dict[str, float]:
    """AdamW for `epochs` passes over `data`, on the model's device. Without `optimizer`, a fresh one: federated
    clients keep no optimizer state between rounds; the centralized baseline passes its own to keep it across epochs.

    `prox_mu` > 0 adds FedProx's (mu / 2) ||w - w_start||^2, as its gradient mu (w - w_start), to every trained
    parameter. `track_grad_norm` reports the mean L2 norm of the loss gradient over the steps (FedMAP's feature).
    `pos_weight` (multilabel, per label) weights the positive terms of the loss (see `positive_weights`).
    `grad_accum_steps` batches make one optimizer step (their gradients averaged; an epoch's last, shorter group
    steps too). `precision` bf16 / fp16 autocasts on a GPU (fp16 with a gradient scaler).
    """
    t0 = time.perf_counter()
    backend.prepare(model, data)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    opt = optimizer or make_optimizer(model, lr, weight_decay)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
    trained = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trained] if prox_mu > 0 else None
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32, device=device)
    model.train()
    total, seen, steps, norm_sum = 0.0, 0, 0, 0.0
    n_batches = epochs * ((len(data) + batch_size - 1) // batch_size)

    def step() -> None:
        nonlocal steps, norm_sum
        if scaler is not None:
            scaler.unscale_(opt)
        if track_grad_norm or anchor is not None:
            # Parameters without a gradient (a missing modality's encoder) are neither counted nor pulled.
            pairs = [(p, a) for p, a in zip(trained, anchor or trained) if p.grad is not None]
            if track_grad_norm and pairs:
                norm_sum += torch.linalg.vector_norm(torch.stack(
                    torch._foreach_norm([p.grad for p, _ in pairs]))).item()
            if anchor is not None and pairs:
                torch._foreach_add_([p.grad for p, _ in pairs],
                                    torch._foreach_sub([p.detach() for p, _ in pairs], [a for _, a in pairs]),
                                    alpha=prox_mu)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
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
    out = {"train_loss": total / max(seen, 1), "steps": float(steps), "seconds": time.perf_counter() - t0}
    if track_grad_norm:
        out["grad_norm"] = norm_sum / max(steps, 1)
    return out


def positive_weights(labels: np.ndarray) -> np.ndarray:
    """Per label, negatives / positives of multi-hot `labels`: BCE's `pos_weight`, which makes a rare genre's few
    positives count as much as its many negatives. A label without positives gets negatives / 1 (it has no positive
    term to weight, so the value does not matter)."""
    labels = np.asarray(labels, dtype=np.float64)
    pos = labels.sum(axis=0)
    return ((len(labels) - pos) / np.maximum(pos, 1.0)).astype(np.float32)


@torch.no_grad()
def predict(model: torch.nn.Module, backend: Backend, data: MultimodalDataset, batch_size: int = 256
            ) -> tuple[float, np.ndarray]:
    """(mean loss, logits [N, C]) over the whole of `data`."""
    backend.prepare(model, data)
    was_training = model.training
    model.eval()
    logits, total = [], 0.0
    device = next(model.parameters()).device
    for idx in batch_indices(len(data), batch_size):
        batch = to_device(backend.collate(data, idx), device)
        with autocast(device, backend.precision):
            loss, out = backend.loss(model, batch)
        total += loss.item() * len(idx)
        logits.append(out.float().cpu().numpy())
    model.train(was_training)
    return total / max(len(data), 1), np.concatenate(logits) if logits else np.zeros((0, backend.num_labels))


def evaluate(model: torch.nn.Module, backend: Backend, data: MultimodalDataset, metric_names: tuple[str, ...],
             batch_size: int = 256) -> dict[str, float]:
    """Loss and the named metrics over the whole of `data`, as the backend computes them (see `Backend.evaluate`)."""
    return backend.evaluate(model, data, metric_names, batch_size)
