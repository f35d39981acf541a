"""BLIP for visual question answering (FedUMM, seed 001): `BlipForQuestionAnswering` with LoRA adapters; only the
adapters train and travel (see `vqa_lora.py` for what all such backends share). Answers are generated, and scored
with the official VQA accuracy.

Training feeds the answer to the text decoder as [bos] answer [sep]: the same start token `generate` uses, so what
the decoder learns is what it is asked at evaluation. Padding is `pad_token_id` in the decoder inputs and -100 only
in the labels: -100 is not a token id, and feeding it back as an input id (what BLIP does when only `labels` are
given) fails or silently reads garbage.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import nn

from fedmm.backends.configs import BlipVQAConfig
from fedmm.backends.base import BACKENDS
from fedmm.backends.loading import from_pretrained
from fedmm.backends.vqa_lora import LoraVQABackend
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import FedmmError

# LoRA on the query and value projections of self-attention in the text encoder and decoder (not cross-attention,
# not the vision tower): the seed's 1,179,648 trainable parameters for blip-vqa-base at r = 16.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@BACKENDS.register("blip_vqa", BlipVQAConfig)
class BlipVQABackend(LoraVQABackend):
    cfg: BlipVQAConfig
    default_stats = (CLIP_MEAN, CLIP_STD)  # pixels when the checkpoint gives no mean/std

    def model_class(self) -> type:
        from transformers import BlipForQuestionAnswering

        return BlipForQuestionAnswering

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
                self.sized_from = f"BlipConfig's default shapes, blip-vqa-base's ({self.cfg.pretrained} is not on disk)"
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

    def key_modality(self, key: str) -> str:
        return "image" if key.startswith("vision_model.") else "shared"

    def _text(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def collate(self, data: MultimodalDataset, idx: np.ndarray) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {"pixel_values": self.pixels(data, idx)}
        batch["input_ids"], batch["attention_mask"] = self._text(
            [data.texts[i] for i in idx], self.cfg.max_question_length
        )
        # the answer, as the decoder sees it: [bos] tokens [sep], padded with pad_token_id
        answers = [data.label_names[int(data.labels[i])] for i in idx]
        ids, mask = self._text(answers, self.cfg.max_answer_length)
        ids = ids.clone()
        ids[:, 0] = self.bos_id  # the tokenizer's [CLS] becomes the decoder's start token
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = ids, mask
        batch["labels"] = ids.masked_fill(mask == 0, -100)
        return batch

    def generate_answers(
        self, model: nn.Module, data: MultimodalDataset, idx: np.ndarray, batch: dict[str, torch.Tensor]
    ) -> list[str]:
        out = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            max_new_tokens=self.cfg.max_new_tokens or self.cfg.max_answer_length,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
