"""Which modalities each client has.

Config: `modality.text_only=[2] modality.image_only=[3]` name clients by index (plain lists, so an override replaces
the default rather than merging into it), and `modality.missing_rate` makes that fraction of the *other* clients
(chosen by seed) lose one modality (`modality.drop`: image, text, or random per client). Unnamed clients have both.

Per sample (FedMultimodal's robustness axis): `modality.sample_missing_image` / `modality.sample_missing_text` are
the probabilities that a training sample of a client that has both modalities lacks that one (`sample_missing`).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from fedmm.data.dataset import MODALITIES
from fedmm.errors import FedmmError


def client_modalities(text_only: Sequence[int], image_only: Sequence[int]) -> dict[int, frozenset[str]]:
    both = set(text_only) & set(image_only)
    if both:
        raise FedmmError(f"client(s) {sorted(both)} are in both modality.text_only and modality.image_only")
    return {**{int(k): frozenset({"text"}) for k in text_only}, **{int(k): frozenset({"image"}) for k in image_only}}


def parse_client_modalities(spec: str) -> dict[int, frozenset[str]]:
    """The string form "1:text,2:image,3:image+text" (used by command-line flags) -> {client: modalities}."""
    if not spec:
        return {}
    items = []
    for part in spec.split(","):
        if ":" not in part:
            raise FedmmError(f"bad modality spec '{part}'; write CLIENT:MODALITIES, e.g. '1:text,2:image'")
        k, v = part.split(":", 1)
        items.append((k, v.split("+")))
    out = {}
    for k, mods in items:
        try:
            cid = int(k)
        except ValueError:
            raise FedmmError(f"'{k}' is not a client index") from None
        mods = [str(m).strip() for m in mods]
        bad = [m for m in mods if m not in MODALITIES]
        if bad or not mods:
            raise FedmmError(f"client {cid}: modalities must be a non-empty subset of {list(MODALITIES)} (got {mods})")
        out[cid] = frozenset(mods)
    return out


def assign_modalities(
    num_clients: int, explicit: Mapping[int, frozenset[str]], missing_rate: float, drop: str, seed: int
) -> list[frozenset[str]]:
    for cid in explicit:
        if not 0 <= cid < num_clients:
            raise FedmmError(
                f"modality settings name client {cid}, but clients are 0..{num_clients - 1}; clear it "
                f"with modality.text_only=[] modality.image_only=[] (or name existing clients)"
            )
    if not 0.0 <= missing_rate <= 1.0:
        raise FedmmError(f"modality.missing_rate must be in [0, 1] (got {missing_rate})")
    if drop not in ("image", "text", "random"):
        raise FedmmError(f"modality.drop must be image, text or random (got '{drop}')")
    out = [explicit.get(k, frozenset(MODALITIES)) for k in range(num_clients)]
    free = [k for k in range(num_clients) if k not in explicit]
    n_missing = int(round(missing_rate * len(free)))
    rng = np.random.default_rng([seed, 7])
    for k in rng.choice(free, size=n_missing, replace=False):
        lost = drop if drop != "random" else str(rng.choice(MODALITIES))
        out[int(k)] = frozenset(MODALITIES) - {lost}
    return out


def sample_missing(
    n: int, p_image: float, p_text: float, seed: int, client: int
) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(image_present, text_present) for a client's n samples: each sample independently lacks its image with
    probability p_image or its text with p_text, never both (one uniform draw per sample decides: below p_image the
    image is missing, then up to p_image + p_text the text). Deterministic in (seed, client); None where nothing is
    missing."""
    if p_image + p_text > 1:
        raise FedmmError(
            f"modality.sample_missing_image + modality.sample_missing_text = {p_image + p_text:g} is over 1 (a "
            f"sample never loses both); lower one of them"
        )
    u = np.random.default_rng([seed, 31, client]).random(n)
    image = u >= p_image
    text = (u < p_image) | (u >= p_image + p_text)
    return (None if image.all() else image), (None if text.all() else text)
