"""BLIP for visual question answering (FedUMM, seed 001): `BlipForQuestionAnswering` with LoRA adapters; only the
adapters train and travel. Answers are generated, and scored with the official VQA accuracy.

Read top to bottom: config, the backend (tokenizer, model + LoRA, batches, loss, generation-based evaluation).

Training feeds the answer to the text decoder as [bos] answer [sep]: the same start token `generate` uses, so what
the decoder learns is what it is asked at evaluation. Padding is `pad_token_id` in the decoder inputs and -100 only
in the labels: -100 is not a token id, and feeding it back as an input id (what BLIP does when only `labels` are
given) fails or silently reads garbage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from fedmm import metrics as M
from fedmm.backends.base import BACKENDS, Backend
from fedmm.backends.loading import from_pretrained, image_stats, load_tokenizer
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import FedmmError

# LoRA on the query and value projections of self-attention in the text encoder and decoder (not cross-attention,
# not the vision tower): the seed's 1,179,648 trainable parameters for blip-vqa-base at r = 16.
SELF_ATTENTION_QV = r"text_(encoder|decoder)\..*layer\.\d+\.attention\.self\.(query|value)"
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass
class BlipVQAConfig:
    name: str = "blip_vqa"
    # Weights: a local folder or hub id (offline: the HF cache); "" = random init from text_config / vision_config.
    pretrained: str = "Salesforce/blip-vqa-base"
    tokenizer: str = ""  # "" = the checkpoint's; "tiny" = fedmm's offline vocabulary
    text_config: Dict[str, Any] = field(default_factory=dict)  # BlipTextConfig fields for random init
    vision_config: Dict[str, Any] = field(default_factory=dict)  # BlipVisionConfig fields for random init
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: str = SELF_ATTENTION_QV  # a regular expression over module names (peft's target_modules)
    image_size: int = 384
    max_question_length: int = 32
    max_answer_length: int = 8  # answer tokens, in training and generation
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    image_mean: List[float] = field(default_factory=list)  # empty = the checkpoint's, else CLIP's
    image_std: List[float] = field(default_factory=list)


@BACKENDS.register("blip_vqa", BlipVQAConfig)
class BlipVQABackend(Backend):
    cfg: BlipVQAConfig
    metrics = frozenset({"vqa_accuracy"})

    def __init__(self, cfg: BlipVQAConfig, num_labels: int, multilabel: bool):
        super().__init__(cfg, num_labels, multilabel)
        if multilabel:
            raise FedmmError("model=blip_vqa answers questions; it needs a VQA task (task=easyvqa_gen)")
        if cfg.lora_r < 1:
            raise FedmmError(f"model.lora_r must be at least 1 (got {cfg.lora_r}); blip_vqa trains LoRA adapters")

    # Tokenizer, config and pixel statistics are read when first needed, so `fedmm info` can count parameters
    # from shapes alone, with nothing on disk.
    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg.tokenizer, self.cfg.pretrained, "pretrained")

    def model_config(self, offline_shapes: bool = False):
        """The checkpoint's BlipConfig; for random init (or, with `offline_shapes`, when the checkpoint is not on
        disk) one built from text_config / vision_config, whose defaults are blip-vqa-base's shapes."""
        from transformers import BlipConfig

        if self.cfg.pretrained:
            try:
                return from_pretrained(BlipConfig.from_pretrained, self.cfg.pretrained, "BLIP config", "pretrained")
            except FedmmError:
                if not offline_shapes:
                    raise
        text = dict(self.cfg.text_config)
        if self.cfg.tokenizer == "tiny" or not self.cfg.pretrained:
            text.setdefault("vocab_size", len(self.tokenizer))
            text.setdefault("bos_token_id", self.tokenizer.cls_token_id)
            text.setdefault("sep_token_id", self.tokenizer.sep_token_id)
            text.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return BlipConfig(text_config=text, vision_config=dict(self.cfg.vision_config))

    @cached_property
    def bos_id(self) -> int:
        """The token the decoder starts an answer with (BLIP's [DEC]); `generate` starts from it too."""
        return int(self.model_config().text_config.bos_token_id)

    @cached_property
    def _pixel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        mean, std = (cfg.image_mean, cfg.image_std) if cfg.image_mean else (
            (cfg.pretrained and image_stats(cfg.pretrained)) or (CLIP_MEAN, CLIP_STD))
        return (torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def _add_lora(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = self.cfg
        model.requires_grad_(False)
        try:
            return inject_adapter_in_model(LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                      lora_dropout=cfg.lora_dropout,
                                                      target_modules=cfg.lora_targets), model)
        except ValueError as e:
            raise FedmmError(f"model.lora_targets '{cfg.lora_targets}' matches no linear layer of BLIP "
                             f"({str(e).splitlines()[0][:120]})") from None

    def build_model(self, seed: int = 0) -> nn.Module:
        from transformers import BlipForQuestionAnswering

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.cfg.pretrained:
                model = from_pretrained(BlipForQuestionAnswering.from_pretrained, self.cfg.pretrained, "BLIP model",
                                        "pretrained")
            else:
                model = BlipForQuestionAnswering(self.model_config())
            model = self._add_lora(model)
        if self.cfg.gradient_checkpointing:
            # Non-reentrant checkpointing needs no input that requires grad; the hook transformers adds for that
            # (enable_input_require_grads) breaks BLIP's in-place `embeddings += position_embeddings`, so it goes.
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.disable_input_require_grads()
        return model.train()

    def meta_model(self) -> nn.Module:
        from transformers import BlipForQuestionAnswering

        config = self.model_config(offline_shapes=True)
        with torch.device("meta"):
            return self._add_lora(BlipForQuestionAnswering(config))

    def key_modality(self, key: str) -> str:
        return "image" if key.startswith("vision_model.") else "shared"

    def _text(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def collate(self, data: MultimodalDataset, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if data.texts is None or data.images is None:
            raise FedmmError("blip_vqa needs both the image and the question; clients that miss a modality "
                             "need a fusion model")
        batch: dict[str, torch.Tensor] = {}
        batch["input_ids"], batch["attention_mask"] = self._text([data.texts[i] for i in idx],
                                                                 self.cfg.max_question_length)
        x = torch.from_numpy(np.stack([data.images[j] for j in data.image_ids[idx]])).permute(0, 3, 1, 2)
        x = x.float().div_(255.0)
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            x = nn.functional.interpolate(x, size=(self.cfg.image_size,) * 2, mode="bicubic", antialias=True,
                                          align_corners=False)
        mean, std = self._pixel_stats
        batch["pixel_values"] = (x - mean) / std
        # the answer, as the decoder sees it: [bos] tokens [sep], padded with pad_token_id
        answers = [data.label_names[int(data.labels[i])] for i in idx]
        ids, mask = self._text(answers, self.cfg.max_answer_length)
        ids = ids.clone()
        ids[:, 0] = self.bos_id  # the tokenizer's [CLS] becomes the decoder's start token
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = ids, mask
        batch["labels"] = ids.masked_fill(mask == 0, -100)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], pos_weight: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return model(**batch).loss, None

    @torch.no_grad()
    def generate(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"], max_new_tokens=self.cfg.max_answer_length)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: MultimodalDataset, metric_names: tuple[str, ...],
                 batch_size: int = 256) -> dict[str, float]:
        from fedmm.train.loop import autocast, batch_indices, to_device

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, scores = 0.0, []
        for idx in batch_indices(len(data), batch_size):
            batch = to_device(self.collate(data, idx), device)
            with autocast(device, self.precision):
                total += self.loss(model, batch)[0].item() * len(idx)
                answers = self.generate(model, batch)
            for i, answer in zip(idx, answers):
                scores.append(M.vqa_accuracy(answer, data.references(i)))
        model.train(was_training)
        return {"loss": total / max(len(data), 1), "vqa_accuracy": float(np.mean(scores)) if scores else 0.0}
