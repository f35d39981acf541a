"""Compressed client updates: what a client sends is its *change* to the global parameters (delta = trained -
received), in fewer bits, and the server adds the decoded delta back to the global parameters it sent.

Kinds (the bytes per parameter on the wire, besides the message header):
- `fp16` (2): IEEE half precision, relative error <= 2^-11 within its range (|x| < 65504);
- `bf16` (2): the upper half of the float32 bits, rounded to nearest even: relative error <= 2^-8, float32's range;
- `int8` (1 + 4 per tensor): round(x / s) with s = max|x| / 127 per tensor: absolute error <= s / 2;
- `int8_block` (1 + 4 per block): the same with one scale per `block_size` consecutive values, so one large value
  costs precision only in its own block.

Deltas rather than weights are compressed because they are small and centred on zero: the quantisation error scales
with the update, not with the weights. With error feedback (Seide et al. 2014; Karimireddy et al. 2019) a client
adds what its previous messages lost (its residual) before compressing, and keeps the new loss: over rounds every
bit of the update arrives, just later. The residual is the client's state, so it lives with the client.
"""

from __future__ import annotations

import json

import numpy as np

from fedmm.errors import FedmmError
from fedmm.params import Params

KINDS = ("none", "fp16", "bf16", "int8", "int8_block")
SCALE = ".__scale__"  # suffix of the tensor holding a quantised tensor's scales


def check_kind(kind: str, block_size: int = 256) -> None:
    if kind not in KINDS:
        raise FedmmError(f"compression.kind must be one of {', '.join(KINDS)} (got '{kind}')")
    if kind == "int8_block" and block_size < 1:
        raise FedmmError(f"compression.block_size must be at least 1 (got {block_size})")


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest, ties to even
    return (rounded >> 16).astype(np.uint16)


def _from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _quantise(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and float32 scales for `x` flattened into blocks of `block` values (the last one shorter).

    The codes are the nearest under the float32 scale that travels, so every decoded value is within half a step:
    the quotient is taken in float64, because in float32 it can round to an exact half (105.49999627 -> 105.5) and
    `rint` then picks the farther code."""
    block = max(block, 1)
    flat = x.astype(np.float64).ravel()
    pad = (-flat.size) % block
    blocks = np.pad(flat, (0, pad)).reshape(-1, block)
    scale = (np.abs(blocks).max(axis=1) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.rint(blocks / safe[:, None]), -127, 127).astype(np.int8)
    return codes.ravel()[: flat.size], scale


def _dequantise(codes: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    per_value = np.repeat(scale, max(block, 1))[: codes.size]
    return codes.astype(np.float32) * per_value


def encode(delta: Params, kind: str, block_size: int = 256) -> tuple[Params, dict[str, str]]:
    """The tensors to send for `delta` (same names and shapes; int8 adds `<name>.__scale__`) and the header
    metadata `decode` needs."""
    check_kind(kind, block_size)
    if kind == "none":
        return dict(delta), {}
    out: Params = {}
    for k, v in delta.items():
        if kind == "fp16":
            out[k] = v.astype(np.float16)
        elif kind == "bf16":
            out[k] = _to_bf16_bits(v)
        else:
            codes, out[k + SCALE] = _quantise(v, v.size if kind == "int8" else block_size)
            out[k] = codes.reshape(v.shape)
    return out, {"fedmm_compression": json.dumps({"kind": kind, "block_size": block_size})}


def decode(tensors: Params, metadata: dict[str, str]) -> Params:
    """The float32 delta `encode` compressed (approximately)."""
    if "fedmm_compression" not in metadata:
        return dict(tensors)
    meta = json.loads(metadata["fedmm_compression"])
    kind, out = meta["kind"], {}
    for k, v in tensors.items():
        if k.endswith(SCALE):
            continue
        if kind == "fp16":
            out[k] = v.astype(np.float32)
        elif kind == "bf16":
            out[k] = _from_bf16_bits(v)
        else:
            block = v.size if kind == "int8" else int(meta["block_size"])
            out[k] = _dequantise(v.ravel(), tensors[k + SCALE], block).reshape(v.shape)
    return out


def compress_update(
    trained: Params, received: Params, residual: Params | None, kind: str, block_size: int = 256
) -> tuple[Params, dict[str, str], Params]:
    """(tensors to send, their metadata, the new residual) for a client that trained `received` into `trained`.
    `residual` is what earlier messages lost (None: no error feedback); the new residual is what this one loses."""
    delta = {k: v.astype(np.float32) - received[k].astype(np.float32) for k, v in trained.items()}
    if residual is not None:
        delta = {k: v + residual.get(k, 0.0) for k, v in delta.items()}
    tensors, meta = encode(delta, kind, block_size)
    sent = decode(tensors, meta)
    new_residual = {k: delta[k] - sent[k] for k in delta}
    return tensors, meta, new_residual


def apply_delta(delta: Params, global_params: Params) -> Params:
    """The global parameters plus a decoded delta, in the global dtypes (only for the keys of `delta`): how the
    server rebuilds a compressed update's parameters (`fedmm.fl.validation.check_reply` checks shapes first). The sum
    is taken in float64 and rounded once to the global dtype (in float32 a float16 global would be rounded twice)."""
    return {k: (global_params[k].astype(np.float64) + d).astype(global_params[k].dtype) for k, d in delta.items()}
