"""Personalization (`personalize=...`): what each site keeps for itself beside the global model.

- `finetune`: after the last round each site fine-tunes the global model on its own training data
  (`personalize.epochs`) and is scored before and after; nothing is kept.
- `fedper` (Arivazhagan et al. 2019): the tensors matching `personalize.local_keys` (default: the classifier head)
  never travel; each site trains its own copy across rounds.
- `fedbn` (Li et al. 2021, FedBN): the normalisation layers (their weights and running statistics) never travel.
- `ditto` (Li et al. 2021, Ditto): besides its usual update of the global model, each site trains a personal model
  on the same data with lambda/2 ||v - w_global||^2 added to its loss (the proximal gradient of FedProx's hook).

The personal tensors are the site's state (`ClientState`, kind `personal`): kept where the client runs, written per
round like the error-feedback residual (so a resumed run continues exactly), never sent. Until a site has its own
copy, its personal tensors are the model's initial values (fedper, fedbn) or the global model it first receives
(ditto). The server never sees them: its evaluation scores the global model, whose local keys keep their initial
values; client-side evaluation (`client_eval`) reports each site's global and personal figures side by side.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from fedmm.errors import FedmmError

# fedper's default local keys: the classifier head of the backends (fusion: classifier; transformers: a head named
# classifier, score, head or lm_head, also below a peft wrapper's prefixes)
HEAD_KEYS = r"(^|\.)(classifier|score|head|lm_head)\."
NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
KEEPS_TENSORS = ("fedper", "fedbn")  # the modes whose personal tensors replace global ones in the model
PERSONAL = "personal"  # the ClientState kind


def personal_keys(cfg: Any, model: torch.nn.Module, keys: list[str]) -> tuple[str, ...]:
    """Of the trained `keys`, those that stay at the sites under `cfg` (the `personalize` settings); refuses a mode
    that would keep nothing, or everything, local."""
    if cfg.name == "fedper":
        pattern = cfg.local_keys or HEAD_KEYS
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise FedmmError(f"personalize.local_keys={pattern!r} is not a regular expression ({e})") from None
        local = tuple(k for k in keys if regex.search(k))
        what = f"personalize.local_keys={pattern!r}"
    elif cfg.name == "fedbn":
        norms = {name for name, m in model.named_modules() if isinstance(m, NORM_LAYERS)}
        local = tuple(k for k in keys if k.rpartition(".")[0] in norms)
        what = "personalize=fedbn (normalisation layers)"
    else:
        return ()
    if not local:
        shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
        raise FedmmError(
            f"{what} matches none of the model's trained tensors ({shown}); give personalize.local_keys a regex "
            f"that matches the ones to keep at the sites"
        )
    if len(local) == len(keys):
        raise FedmmError(f"{what} matches every trained tensor: nothing would be shared; keep fewer local")
    return local
