"""What the vision-language backends share: a pretrained (or randomly initialised) image-text model, frozen, with LoRA
adapters that alone train and travel; image + question in, a generated answer out, scored with the VQA accuracy.

A family (BLIP, Janus, ...) supplies its model class and config (`model_class`, `model_config`), its batches
(`collate`) and how it generates answers (`generate_answers`). Tokenizer, config and pixel statistics are read when
first needed, so `fedmm info` can size a model from shapes alone, with nothing on disk.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import nn

from fedmm import metrics as M
from fedmm.backends.base import Backend
from fedmm.backends.loading import from_pretrained, image_stats, load_tokenizer
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import FedmmError
from fedmm.modelops import autocast, batch_indices, inject_lora, normalized_pixels, to_device


class LoraVQABackend(Backend):
    metrics = frozenset({"vqa_accuracy"})
    default_stats: tuple[list[float], list[float]] = ([0.5] * 3, [0.5] * 3)  # when the checkpoint gives none

    def __init__(self, cfg, num_labels: int, multilabel: bool):
        super().__init__(cfg, num_labels, multilabel)
        if multilabel:
            raise FedmmError(f"model={cfg.name} answers questions; it needs a VQA task (task=easyvqa_gen or vqav2)")
        if cfg.lora_r < 1:
            raise FedmmError(f"model.lora_r must be at least 1 (got {cfg.lora_r}); {cfg.name} trains LoRA adapters")

    # -- a family supplies ---------------------------------------------------------------------------------------
    def model_class(self) -> type:
        raise NotImplementedError

    def model_config(self, offline_shapes: bool = False):
        """The checkpoint's config; for random init (or, with `offline_shapes`, when the checkpoint is not on
        disk) one built from the configured shapes."""
        raise NotImplementedError

    def generate_answers(
        self, model: nn.Module, data: MultimodalDataset, idx: np.ndarray, batch: dict[str, torch.Tensor]
    ) -> list[str]:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg.tokenizer, self.cfg.pretrained, "pretrained")

    @cached_property
    def _pixel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        mean, std = (
            (cfg.image_mean, cfg.image_std)
            if cfg.image_mean
            else ((cfg.pretrained and image_stats(cfg.pretrained)) or self.default_stats)
        )
        return (
            torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
        )

    def lora_targets(self, model: nn.Module) -> str:
        """The regular expression over module names that gets adapters (peft's target_modules)."""
        return self.cfg.lora_targets

    def _add_lora(self, model: nn.Module) -> nn.Module:
        cfg = self.cfg
        model.requires_grad_(False)
        return inject_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, self.lora_targets(model), cfg.name)

    def build_model(self, seed: int = 0) -> nn.Module:
        cls = self.model_class()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.cfg.pretrained:
                model = from_pretrained(
                    cls.from_pretrained, self.cfg.pretrained, f"{self.cfg.name} model", "pretrained"
                )
            else:
                model = cls(self.model_config())
            model = self._add_lora(model)
        if self.cfg.gradient_checkpointing:
            # Non-reentrant checkpointing needs no input that requires grad; the hook transformers adds for that
            # (enable_input_require_grads) breaks in-place embedding arithmetic (BLIP's), so it goes.
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.disable_input_require_grads()
        return model.train()

    def meta_model(self) -> nn.Module:
        config = self.model_config(offline_shapes=True)
        with torch.device("meta"):
            return self._add_lora(self.model_class()(config))

    def pixels(self, data: MultimodalDataset, idx: np.ndarray) -> torch.Tensor:
        """The batch's images at image_size, normalised; the data set must hold both modalities."""
        if data.texts is None or data.images is None:
            raise FedmmError(
                f"{self.cfg.name} needs both the image and the question; clients that miss a modality "
                f"need a fusion model"
            )
        mean, std = self._pixel_stats
        return normalized_pixels(
            np.stack([data.images[j] for j in data.image_ids[idx]]), self.cfg.image_size, mean, std, mode="bicubic"
        )

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], pos_weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return model(**batch).loss, None

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        data: MultimodalDataset,
        metric_names: tuple[str, ...],
        batch_size: int = 256,
        zero_division: float = 1.0,  # no F1 here: answers are scored by VQA accuracy
    ) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, scores = 0.0, []
        for idx in batch_indices(len(data), batch_size):
            batch = to_device(self.collate(data, idx), device)
            with autocast(device, self.precision):
                total += self.loss(model, batch)[0].item() * len(idx)
                answers = self.generate_answers(model, data, idx, batch)
            scores += [M.vqa_accuracy(a, data.references(i), data.answer_rule) for i, a in zip(idx, answers)]
        model.train(was_training)
        return {"loss": total / max(len(data), 1), "vqa_accuracy": float(np.mean(scores)) if scores else 0.0}
