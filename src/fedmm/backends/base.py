"""The Backend interface: everything the federated core needs to know about a model family.

The core never looks inside a model. It asks the backend which state-dict keys are trainable (only those travel) and
which modality each key belongs to (what modality-aware aggregation and clients missing a modality need).
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from fedmm import metrics as M
from fedmm.data.dataset import MultimodalDataset
from fedmm.modelops import autocast, batch_indices, to_device
from fedmm.registry import BACKENDS  # noqa: F401  (re-exported: backends register here)


class Backend:
    """Builds a model for a label space, batches data for it, and computes its loss and logits."""

    def __init__(self, cfg, num_labels: int, multilabel: bool):
        self.cfg = cfg
        self.num_labels = num_labels
        self.multilabel = multilabel

    # -- to implement -------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def collate(self, data: MultimodalDataset, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """A batch for `model(**batch)`; holds `labels`, and no input of a modality `data` lacks."""
        raise NotImplementedError

    def key_modality(self, key: str) -> str:
        """'image', 'text' or 'shared' for a state-dict key."""
        return "shared"

    def meta_model(self) -> nn.Module:
        """The model with its trainable parts marked, on the meta device (shapes, no memory): what `fedmm info`
        counts. Backends that can build from a config alone override this to need no weights at all."""
        with torch.device("meta"):
            return self.build_model(seed=0)

    # -- shared behaviour ---------------------------------------------------------------------------------------
    # The metrics this backend can report: classifiers score logits (fedmm.metrics.METRICS); generative backends
    # override `metrics` and `evaluate` to score generated text.
    metrics: frozenset[str] = frozenset(M.METRICS)
    per_sample_missing = False  # whether a batch may mix samples with and without a modality (the fusion model)
    precision: str = "fp32"  # evaluation autocast on a GPU (the run's `precision`; training gets it per round)
    sized_from: str = ""  # set by meta_model when it had to size the model without the checkpoint's config

    def prepare(self, model: nn.Module, data: MultimodalDataset) -> None:
        """Called before `model` trains on or is evaluated on `data`: a chance to precompute what stays fixed
        (the fusion model caches its frozen encoders' features here)."""

    def evaluate(
        self,
        model: nn.Module,
        data: MultimodalDataset,
        metric_names: tuple[str, ...],
        batch_size: int = 256,
        zero_division: float = 1.0,
    ) -> dict[str, float]:
        """Loss and the named metrics over the whole of `data` (`zero_division`: fedmm.metrics.compute's)."""
        loss, logits = self.predict(model, data, batch_size)
        return {"loss": loss, **M.compute(metric_names, logits, data.labels, zero_division=zero_division)}

    @torch.no_grad()
    def predict(self, model: nn.Module, data: MultimodalDataset, batch_size: int = 256) -> tuple[float, np.ndarray]:
        """(mean loss, logits [N, C]) over the whole of `data`, in evaluation mode."""
        self.prepare(model, data)
        was_training = model.training
        model.eval()
        logits, total = [], 0.0
        device = next(model.parameters()).device
        for idx in batch_indices(len(data), batch_size):
            batch = to_device(self.collate(data, idx), device)
            with autocast(device, self.precision):
                loss, out = self.loss(model, batch)
            total += loss.item() * len(idx)
            logits.append(out.float().cpu().numpy())
        model.train(was_training)
        return total / max(len(data), 1), np.concatenate(logits) if logits else np.zeros((0, self.num_labels))

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: v for k, v in batch.items() if k != "labels"})

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], pos_weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits). `pos_weight` (multilabel only) weights each label's positive term."""
        logits = self.logits(model, batch)
        if self.multilabel:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"], pos_weight=pos_weight)
        else:
            loss = nn.functional.cross_entropy(logits, batch["labels"])
        return loss, logits

    @staticmethod
    def trainable_keys(model: nn.Module) -> list[str]:
        """Parameters that require grad, plus the float buffers (BatchNorm statistics) of modules that have such
        parameters. Integer buffers (BatchNorm's `num_batches_tracked`) do not travel: they do not change outputs."""
        keys = []
        for mod_name, module in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            own = list(module.named_parameters(recurse=False))
            for name, p in own:
                if p.requires_grad:
                    keys.append(prefix + name)
            if any(p.requires_grad for _, p in own):
                keys += [
                    prefix + n
                    for n, b in module.named_buffers(recurse=False)
                    if b is not None and b.is_floating_point()
                ]
        return keys

    def client_keys(self, model: nn.Module, modalities: frozenset[str]) -> list[str]:
        """The trainable keys a client with these modalities trains and sends."""
        return [k for k in self.trainable_keys(model) if self.key_modality(k) in modalities | {"shared"}]
