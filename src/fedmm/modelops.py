"""Helpers that the backends, the training loop and the clients all need: parameters in and out of a model, batch
order, device placement, mixed precision, LoRA injection and pixel normalisation.

A leaf module (it imports nothing of fedmm but errors and `Params`), so that backends and the training loop can
share it without importing each other.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from fedmm.errors import FedmmError
from fedmm.params import Params


# -- parameters -------------------------------------------------------------------------------------------------
def get_params(model: nn.Module, keys: list[str]) -> Params:
    state = model.state_dict()
    return {k: state[k].detach().cpu().numpy().copy() for k in keys}


def set_params(model: nn.Module, params: Params) -> None:
    """Copy `params` into the model in place (keys not given keep their values)."""
    state = model.state_dict()
    with torch.no_grad():
        for k, v in params.items():
            if k not in state:
                raise KeyError(f"parameter {k} is not in the model")
            state[k].copy_(torch.from_numpy(np.ascontiguousarray(v)))


# -- batches and devices ----------------------------------------------------------------------------------------
def batch_indices(n: int, batch_size: int, rng: Optional[np.random.Generator] = None) -> Iterator[np.ndarray]:
    """Consecutive batches of a (shuffled) order. A trailing batch of one joins the batch before it: BatchNorm
    cannot train on a single example, and dropping it would silently lose data."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    for i, s in enumerate(starts):
        yield order[s : starts[i + 1] if i + 1 < len(starts) else n]


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


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device: torch.device, precision: str):
    """Mixed precision on a GPU (bf16 / fp16 autocast); on the CPU everything stays fp32, where autocast is slower."""
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# -- model surgery and inputs -----------------------------------------------------------------------------------
def inject_lora(
    module: nn.Module,
    r: int,
    alpha: float,
    dropout: float,
    targets: Union[str, Sequence[str]],
    what: str,
    hint: str = "",
) -> nn.Module:
    """peft's LoRA adapters on the `targets` (module names, or a regular expression over them) of `module`, in
    place; a target list that matches nothing is a one-line error naming `model.lora_targets`."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = targets if isinstance(targets, str) else list(targets)
    try:
        return inject_adapter_in_model(
            LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets), module
        )
    except ValueError as e:
        raise FedmmError(
            f"model.lora_targets {targets!r} match no linear layer of {what} "
            f"({str(e).splitlines()[0][:120]}){'; ' + hint if hint else ''}"
        ) from None


def normalized_pixels(
    images: np.ndarray, size: int, mean: torch.Tensor, std: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """uint8 [N, H, W, 3] images as float [N, 3, size, size], resized (antialiased `mode`) and normalised with the
    per-channel `mean` and `std` ([1, 3, 1, 1])."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)
    return (x - mean) / std
