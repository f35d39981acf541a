"""The trust boundary: every client reply is checked here, on the server, before any strategy sees it, whatever
runtime carried it; then its update norm may be bounded.

A reply is accepted only if it is a fedmm update from the client that was asked, claims between 1 and the client's
declared number of examples, sends only keys that client may send (the travelling keys of its modalities), each
with exactly the global tensor's shape, a floating dtype (cast to the global tensor's dtype: fp16 and bf16 widen
exactly; a float64 value that overflows the global dtype becomes inf and is refused), and only finite values. A
compressed update must decode. Anything else is `Rejected` with a one-line reason, which the server records and
counts as a failed client.

Norm bounding takes the L2 norm of the delta (what the client changed) over all tensors it sent: `clip` scales the
delta down to the bound, `reject` drops the update. `auto` bounds at AUTO_NORM_MULTIPLE x the round's lower median norm
(the ceil(n/2)-th smallest): honest clients of a round move by similar amounts, so a bound a few times theirs
leaves them untouched and cuts a scaled (x1e6) update down to an honest one's size. Large updates can raise that
reference only if they are more than half of the round (with 2 clients, one attacker cannot); a majority of
attackers can set it, as it can any statistic of the round: `auto` is no defence against a majority.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from fedmm.fl.compression import KINDS, SCALE, apply_delta, decode
from fedmm.fl.update import Update
from fedmm.params import Params

AUTO_NORM_MULTIPLE = 2.0
METRIC_BOUND = 1e12  # |a reported figure| at most: sums over clients stay finite in float64, and so does the record
MAX_EXAMPLES = 2**40  # a client's example count at most, when the server knows no smaller bound


class Rejected(Exception):
    """A client's reply that the server refuses; the message is the one-line reason recorded in metrics.jsonl."""


@dataclass(frozen=True)
class Expected:
    """What the server expects from one client: the keys it may send, the modalities it has, its size."""

    keys: Optional[frozenset[str]] = None  # None: any key of the global parameters
    modalities: Optional[frozenset[str]] = None  # None: not checked
    max_examples: Optional[int] = None  # None: no upper bound


def _names(keys: list[str], limit: int = 3) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _bounded_number(v) -> bool:
    """A reported figure: an int or float (not a bool), finite, within +-METRIC_BOUND. Compared before any
    conversion, so that a 400-digit integer is refused, not an OverflowError."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return -METRIC_BOUND <= v <= METRIC_BOUND  # False for nan; ints are compared exactly


def _header(update: Update, cid: int, max_examples: Optional[int]) -> None:
    """What every reply must get right, fit or evaluate: the sender, the example count, the figures."""
    if isinstance(update.client_id, bool) or not isinstance(update.client_id, int) or update.client_id != cid:
        raise Rejected(f"claims to be client {str(update.client_id)[:20]}")
    n = update.num_examples
    limit = max_examples if max_examples is not None else MAX_EXAMPLES
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise Rejected(f"num_examples={str(n)[:20]} outside [1, {limit if max_examples is not None else 'inf'}]")
    if not isinstance(update.metrics, dict) or not all(_bounded_number(v) for v in update.metrics.values()):
        raise Rejected(f"reports metrics that are not finite numbers within +-{METRIC_BOUND:g}")
    if not all(isinstance(m, str) for m in update.modalities):  # a later message sorts them: names only
        raise Rejected("declares modalities that are not names")


def _read(reply: bytes) -> Update:
    try:
        return Update.from_bytes(reply)
    except Exception as e:  # noqa: BLE001 - any malformed message is a rejection, never a crash
        raise Rejected(f"not a fedmm update ({type(e).__name__}: {str(e)[:80]})") from None


def check_eval_reply(reply: bytes, cid: int, max_examples: Optional[int] = None) -> Update:
    """A client_eval reply: the figures of the client that was asked, about at most `max_examples` of its own
    examples, and no tensors (or, from a site without test data, no figures about 0 examples); `Rejected`
    otherwise."""
    update = _read(reply)
    if update.num_examples == 0 and update.metrics == {} and not update.params and update.client_id == cid:
        return update
    _header(update, cid, max_examples)
    if update.params or update.strategy_params:
        raise Rejected("sends tensors in an evaluation reply")
    return update


def check_reply(reply: bytes, cid: int, global_params: Params, expected: Expected = Expected()) -> Update:
    """The update in `reply`, with `params` the client's full tensors in the global dtypes; `Rejected` otherwise."""
    update = _read(reply)
    _header(update, cid, expected.max_examples)
    if expected.modalities is not None and not update.modalities <= expected.modalities:
        raise Rejected(f"claims modalities {sorted(update.modalities)} beyond its {sorted(expected.modalities)}")
    allowed = expected.keys if expected.keys is not None else frozenset(global_params)
    compressed = "fedmm_compression" in update.compression
    sent = [k for k in update.params if not (compressed and k.endswith(SCALE))]
    unknown = sorted(k for k in sent if k not in allowed or k not in global_params)
    if unknown:
        raise Rejected(f"sends keys it may not: {_names(unknown)}")
    if not sent:
        raise Rejected("sends no tensors (a training reply must carry its update)")
    tensors = update.params
    if compressed:
        try:
            kind = json.loads(update.compression["fedmm_compression"])["kind"]
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}")
            tensors = decode(update.params, update.compression)
        except Exception as e:  # noqa: BLE001
            raise Rejected(f"undecodable compressed update ({type(e).__name__}: {str(e)[:80]})") from None
    for k in sent:
        v, g = tensors[k], global_params[k]
        if v.shape != g.shape:
            raise Rejected(f"{k} has shape {tuple(v.shape)}, expected {tuple(g.shape)}")
        if not np.issubdtype(v.dtype, np.floating) and v.dtype != g.dtype:
            raise Rejected(f"{k} has dtype {v.dtype}, expected {g.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        if compressed:
            params = apply_delta({k: tensors[k] for k in sent}, global_params)
        else:
            params = {k: tensors[k].astype(global_params[k].dtype, copy=False) for k in sent}
    extra = update.strategy_params  # SCAFFOLD's control variates: one per tensor the client may send
    foreign = sorted(k for k in extra if k not in allowed or k not in global_params)
    if foreign:
        raise Rejected(f"sends strategy tensors for keys it may not: {_names(foreign)}")
    for k, v in extra.items():
        if v.shape != global_params[k].shape or not np.issubdtype(v.dtype, np.floating):
            raise Rejected(
                f"strategy tensor {k} is {v.dtype} {tuple(v.shape)}, expected a float {global_params[k].shape}"
            )
    bad = sorted(
        k
        for k, v in [*params.items(), *extra.items()]
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()
    )
    if bad:
        raise Rejected(f"non-finite values in {_names(bad)}")
    update.params, update.compression = params, {}
    return update


def delta_norm(params: Params, global_params: Params) -> float:
    """L2 norm over all sent tensors of (params - global), in float64."""
    total = 0.0
    for k, v in params.items():
        d = v.astype(np.float64) - global_params[k].astype(np.float64)
        total += float(np.dot(d.ravel(), d.ravel()))
    return math.sqrt(total)


def clip_update(params: Params, global_params: Params, norm: float, bound: float) -> Params:
    """`params` with its delta scaled by bound / norm (unchanged when already within the bound)."""
    if norm <= bound:
        return params
    factor = bound / norm
    return {
        k: (global_params[k].astype(np.float64) + factor * (v.astype(np.float64) - global_params[k])).astype(
            global_params[k].dtype
        )
        for k, v in params.items()
    }


def norm_bound(setting, norms: list[float]) -> Optional[float]:
    """The round's bound: None (off), a number, or auto = AUTO_NORM_MULTIPLE x the lower median of `norms` (the
    ceil(n/2)-th smallest: a minority of large norms, or one of two, cannot raise it)."""
    if setting is None:
        return None
    if setting == "auto":
        return AUTO_NORM_MULTIPLE * float(sorted(norms)[(len(norms) - 1) // 2]) if norms else None
    return float(setting)
