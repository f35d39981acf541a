"""Janus-Pro (DeepSeek) for visual question answering, through transformers' own `JanusForConditionalGeneration`
(no `trust_remote_code`, no separate environment): LoRA on the language model's q/k/v projections only (not the
vision tower's), the loss on the answer tokens only, answers generated for evaluation.

A question becomes `prompt_template` with `{image}` expanded to the model's `num_image_tokens` image tokens; the
sequence is [bos] prompt answer [eos], and the labels are -100 over [bos] and the prompt, so only the answer is
learned and each answer token is predicted from everything before it (the causal LM shifts by one internally).
Training pads on the right; generation pads prompts on the left so that every answer starts right after its prompt.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import nn

from fedmm.backends.configs import JanusProConfig
from fedmm.backends.base import BACKENDS
from fedmm.backends.loading import from_pretrained, load_tokenizer
from fedmm.backends.vqa_lora import LoraVQABackend
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import FedmmError

IMAGE_PLACEHOLDER = "<image_placeholder>"


@BACKENDS.register("januspro", JanusProConfig)
class JanusProBackend(LoraVQABackend):
    cfg: JanusProConfig

    def __init__(self, cfg: JanusProConfig, num_labels: int, multilabel: bool):
        super().__init__(cfg, num_labels, multilabel)
        if "{image}" not in cfg.prompt_template or "{question}" not in cfg.prompt_template:
            raise FedmmError("model.prompt_template needs {image} and {question}")

    def model_class(self) -> type:
        from transformers import JanusForConditionalGeneration

        return JanusForConditionalGeneration

    @cached_property
    def tokenizer(self):
        tok = load_tokenizer(self.cfg.tokenizer, self.cfg.pretrained, "pretrained")
        if IMAGE_PLACEHOLDER not in tok.get_vocab():
            tok.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
        return tok

    def model_config(self, offline_shapes: bool = False):
        from transformers import JanusConfig

        if self.cfg.pretrained:
            try:
                return from_pretrained(JanusConfig.from_pretrained, self.cfg.pretrained, "Janus config", "pretrained")
            except FedmmError:
                if not offline_shapes:
                    raise
        if self.cfg.pretrained and self.cfg.tokenizer != "tiny":  # offline sizing
            self.sized_from = (
                f"model.text_config, vision_config and vq_config over JanusConfig's defaults ({self.cfg.pretrained} "
                "is not on disk)"
            )
            return JanusConfig(
                text_config=dict(self.cfg.text_config) or None,
                vision_config=dict(self.cfg.vision_config) or None,
                vq_config=dict(self.cfg.vq_config) or None,
                **self._tie(),
            )
        tok = self.tokenizer
        text = {
            "model_type": "llama",
            "vocab_size": len(tok),
            "bos_token_id": tok.cls_token_id,
            "eos_token_id": tok.sep_token_id,
            "pad_token_id": tok.pad_token_id,
            **self.cfg.text_config,
        }
        return JanusConfig(
            text_config=text,
            vision_config=dict(self.cfg.vision_config),
            vq_config=dict(self.cfg.vq_config),
            image_token_id=tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
            **self._tie(),
        )

    def _tie(self) -> dict:
        tie = self.cfg.tie_word_embeddings
        return {} if tie is None else {"tie_word_embeddings": bool(tie)}

    @cached_property
    def _special(self) -> tuple[int, int, int, int, int]:
        """(bos, eos, pad, image token) ids and the number of image tokens per image."""
        config = self.model_config()
        text = config.text_config
        return (
            int(text.bos_token_id),
            int(text.eos_token_id),
            int(text.pad_token_id or 0),
            int(config.image_token_id),
            int(config.vision_config.num_image_tokens),
        )

    def key_modality(self, key: str) -> str:
        return "image" if "vision_model." in key else "shared"

    def _prompt(self, question: str) -> list[int]:
        bos, _, _, image, n_image = self._special
        text = self.cfg.prompt_template.format(image=IMAGE_PLACEHOLDER, question=question)
        ids = self.tokenizer(
            text, add_special_tokens=False, truncation=True, max_length=self.cfg.max_question_length + 32
        )["input_ids"]
        out = [bos]
        for t in ids:
            out += [image] * n_image if t == image else [t]
        return out

    def _answer(self, answer: str) -> list[int]:
        ids = self.tokenizer(
            " " + answer, add_special_tokens=False, truncation=True, max_length=self.cfg.max_answer_length
        )["input_ids"]
        return ids + [self._special[1]]

    def collate(self, data: MultimodalDataset, idx: np.ndarray) -> dict[str, torch.Tensor]:
        pixel_values = self.pixels(data, idx)
        pad = self._special[2]
        rows, targets = [], []
        for i in idx:
            prompt, answer = self._prompt(data.texts[i]), self._answer(data.label_names[int(data.labels[i])])
            rows.append(prompt + answer)
            targets.append([-100] * len(prompt) + answer)
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (row, target) in enumerate(zip(rows, targets)):  # right padding for training
            ids[r, : len(row)], labels[r, : len(row)], mask[r, : len(row)] = (
                torch.tensor(row),
                torch.tensor(target),
                1,
            )
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values, "labels": labels}

    def generate_answers(
        self, model: nn.Module, data: MultimodalDataset, idx: np.ndarray, batch: dict[str, torch.Tensor]
    ) -> list[str]:
        prompts = [self._prompt(data.texts[i]) for i in idx]
        width, pad = max(map(len, prompts)), self._special[2]
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: generation continues right after every prompt
            ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1
        device = batch["pixel_values"].device
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            pixel_values=batch["pixel_values"],
            max_new_tokens=self.cfg.max_new_tokens or self.cfg.max_answer_length,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self._special[1],
            generation_mode="text",
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
