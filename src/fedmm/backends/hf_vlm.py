"""Any Hugging Face image-text-to-text model (`AutoModelForImageTextToText`: LLaVA, PaliGemma, Idefics3/SmolVLM,
Qwen2-VL, Gemma 3, ...) for visual question answering, with LoRA on its language model and prompt -> answer training.

The checkpoint's own processor turns image + prompt into model inputs (image tokens expanded, pixel tensors in the
family's format), so nothing here depends on how a family encodes images. The prompt is the processor's chat
template (one user turn: the image and the question) or `prompt_template` for checkpoints without one (PaliGemma).
The completion (the answer and whatever closes the assistant's turn) is tokenised separately and appended, so the
labels are -100 exactly over the prompt, and generation starts from the very same prompt tokens.

Families keep their language model under different attribute names (`model.language_model`, `model.text_model`);
`LANGUAGE_MODEL` names them, and `get_decoder()` covers families not listed. LoRA goes on that language model's
attention projections (`lora_projections`) unless `lora_targets` gives a regular expression of its own.
"""

from __future__ import annotations

import re
from functools import cached_property

import numpy as np
import torch
from torch import nn

from fedmm.backends.configs import HFVLMConfig
from fedmm.backends.base import BACKENDS
from fedmm.backends.loading import from_pretrained, tiny_tokenizer
from fedmm.backends.vqa_lora import LoraVQABackend
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import FedmmError

# Where each family's language model lives (transformers 5); others: model.language_model, else get_decoder().
LANGUAGE_MODEL = {"idefics2": "model.text_model", "idefics3": "model.text_model", "smolvlm": "model.text_model"}
DEFAULT_LANGUAGE_MODEL = "model.language_model"
VISION_PARTS = ("vision_tower", "vision_model", "visual", "multi_modal_projector", "connector")
# PaliGemma marks the suffix (the completion) with token type 1: causal attention there, bidirectional on the prefix.
COMPLETION_TOKEN_TYPE = {"paligemma": 1}
QUESTION, ANSWER = "\x00question\x00", "\x00answer\x00"  # slots, to split rendered templates around the texts

# The tiny random LLaVA's chat template, over fedmm's offline vocabulary.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}question: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% else %} answer: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} answer:{% endif %}"
)


@BACKENDS.register("hf_vlm", HFVLMConfig)
class HFVLMBackend(LoraVQABackend):
    cfg: HFVLMConfig

    def __init__(self, cfg: HFVLMConfig, num_labels: int, multilabel: bool):
        super().__init__(cfg, num_labels, multilabel)
        if cfg.prompt_template and "{question}" not in cfg.prompt_template:
            raise FedmmError(
                "model.prompt_template needs {question} ({image} marks where the image tokens go, for "
                "processors that do not place them)"
            )
        if cfg.tokenizer:
            raise FedmmError("model=hf_vlm uses its processor's tokenizer; leave model.tokenizer unset")
        if not cfg.pretrained and cfg.family != "llava":
            raise FedmmError(
                f"model.family={cfg.family or '(unset)'} cannot be random-initialised by fedmm; give "
                f"model.pretrained=PATH (a checkpoint folder), or model.family=llava for a tiny model"
            )

    # -- model, processor, config --------------------------------------------------------------------------------
    def model_config(self, offline_shapes: bool = False):
        """The checkpoint's config; offline (for `fedmm info`) the family's default shapes; for random init a LLaVA
        built from text_config / vision_config over the tiny tokenizer."""
        from transformers import CONFIG_MAPPING, AutoConfig, LlavaConfig

        cfg = self.cfg
        if cfg.pretrained:
            try:
                return from_pretrained(AutoConfig.from_pretrained, cfg.pretrained, f"{cfg.name} config", "pretrained")
            except FedmmError:
                if not (offline_shapes and cfg.family in CONFIG_MAPPING):
                    raise
                self.sized_from = f"{cfg.family}'s default config shapes ({cfg.pretrained} is not on disk)"
                return CONFIG_MAPPING[cfg.family](
                    text_config=dict(cfg.text_config) or None, vision_config=dict(cfg.vision_config) or None
                )
        tok = self.processor.tokenizer
        text = {
            "model_type": "llama",
            "vocab_size": len(tok),
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            **cfg.text_config,
        }
        vision = {"model_type": "clip_vision_model", "image_size": cfg.image_size, **cfg.vision_config}
        return LlavaConfig(text_config=text, vision_config=vision, image_token_id=tok.convert_tokens_to_ids("<image>"))

    @cached_property
    def family(self) -> str:
        return self.cfg.family or self.model_config().model_type

    def model_class(self) -> type:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

        config = self.model_config(offline_shapes=True)
        try:
            return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)]
        except KeyError:
            raise FedmmError(
                f"{self.cfg.pretrained or self.family} ({config.model_type}) is not an image-text-to-text "
                f"model; model=hf_vlm needs one that AutoModelForImageTextToText loads"
            ) from None

    @cached_property
    def processor(self):
        if self.cfg.pretrained:
            from transformers import AutoProcessor

            processor = from_pretrained(AutoProcessor.from_pretrained, self.cfg.pretrained, "processor", "pretrained")
        else:
            processor = self._tiny_processor()
        if self.cfg.image_mean:
            processor.image_processor.image_mean = list(self.cfg.image_mean)
            processor.image_processor.image_std = list(self.cfg.image_std)
        tok = processor.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        return processor

    def _tiny_processor(self):
        """A LLaVA processor over fedmm's offline vocabulary, its CLIP image processor sized to `image_size`."""
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        tok = tiny_tokenizer()
        tok.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]", "additional_special_tokens": ["<image>"]})
        tok.model_input_names = ["input_ids", "attention_mask"]  # a decoder has no token types
        mean, std = (self.cfg.image_mean, self.cfg.image_std) if self.cfg.image_mean else self.default_stats
        size = self.cfg.image_size
        images = CLIPImageProcessorPil(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=list(mean),
            image_std=list(std),
        )
        return LlavaProcessor(
            image_processor=images,
            tokenizer=tok,
            chat_template=TINY_CHAT_TEMPLATE,
            patch_size=int(self.cfg.vision_config.get("patch_size", 32)),
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # -- LoRA targets and modalities -----------------------------------------------------------------------------
    def language_model_prefix(self, model: nn.Module) -> str:
        modules = dict(model.named_modules())
        prefix = LANGUAGE_MODEL.get(self.family, DEFAULT_LANGUAGE_MODEL)
        if prefix in modules:
            return prefix
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        found = [name for name, m in modules.items() if m is decoder and name]
        if not found:
            raise FedmmError(
                f"cannot find the language model of {self.family}; give model.lora_targets=REGEX "
                f"(a regular expression over its module names)"
            )
        return found[0]

    def lora_targets(self, model: nn.Module) -> str:
        if self.cfg.lora_targets:
            return self.cfg.lora_targets
        return rf"{re.escape(self.language_model_prefix(model))}\..*\.({self.cfg.lora_projections})"

    def key_modality(self, key: str) -> str:
        return "image" if any(f".{part}." in f".{key}" for part in VISION_PARTS) else "shared"

    # -- prompts and completions ---------------------------------------------------------------------------------
    @cached_property
    def _templates(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(text before, after the question) in the prompt and (before, after the answer) in the completion."""
        p = self.processor
        if self.cfg.prompt_template:
            prompt = self.cfg.prompt_template.format(image=getattr(p, "image_token", ""), question=QUESTION)
            return tuple(prompt.split(QUESTION)), ("", self.tokenizer.eos_token or "")
        if not getattr(p, "chat_template", None):
            raise FedmmError(
                f"the processor of {self.cfg.pretrained} has no chat template; give model.prompt_template "
                f"(e.g. 'answer en {{question}}' for PaliGemma)"
            )
        user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        prompt = p.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = p.apply_chat_template(
            user + [{"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}], tokenize=False
        )
        if not full.startswith(prompt) or ANSWER not in full[len(prompt) :]:
            raise FedmmError(
                f"cannot split {self.cfg.pretrained}'s chat template into prompt and answer; give model.prompt_template"
            )
        completion = full[len(prompt) :]
        return tuple(prompt.split(QUESTION)), tuple(completion.split(ANSWER))

    def _question(self, question: str) -> str:
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
        if len(ids) > self.cfg.max_question_length:
            question = self.tokenizer.decode(ids[: self.cfg.max_question_length])
        (before, after), _ = self._templates
        return before + question + after

    @cached_property
    def _closing_ids(self) -> list[int]:
        """The tokens that close the assistant's turn after the answer (the end of turn, eos)."""
        return self.tokenizer(self._templates[1][1], add_special_tokens=False)["input_ids"]

    def _completion(self, answer: str) -> list[int]:
        ids = self.tokenizer(
            self._templates[1][0] + answer,
            add_special_tokens=False,
            truncation=True,
            max_length=self.cfg.max_answer_length,
        )["input_ids"]
        return ids + self._closing_ids

    # -- batches ---------------------------------------------------------------------------------------------------
    def collate(self, data: MultimodalDataset, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Prompts through the processor (with their images), completions appended, right padding; -100 labels
        over the prompt and the padding."""
        from PIL import Image

        if data.texts is None or data.images is None:
            raise FedmmError(
                f"{self.cfg.name} needs both the image and the question; clients that miss a modality "
                f"need a fusion model"
            )
        images = [Image.fromarray(data.images[j]) for j in data.image_ids[idx]]
        enc = self.processor(
            text=[self._question(data.texts[i]) for i in idx],
            images=images,
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
        enc.pop("labels", None)  # PaliGemma's processor adds prompt-only labels; ours follow
        per_token = {k: enc.pop(k) for k in list(enc) if torch.is_tensor(enc[k]) and enc[k].shape == ids.shape}
        completions = [self._completion(data.label_names[int(data.labels[i])]) for i in idx]
        lengths = mask.sum(1).tolist()
        width = max(n + len(c) for n, c in zip(lengths, completions))
        pad = self.tokenizer.pad_token_id
        out = {
            "input_ids": torch.full((len(idx), width), pad, dtype=torch.long),
            "attention_mask": torch.zeros((len(idx), width), dtype=torch.long),
            "labels": torch.full((len(idx), width), -100, dtype=torch.long),
        }
        fill = COMPLETION_TOKEN_TYPE.get(self.family, 0)
        out.update({k: torch.zeros((len(idx), width), dtype=v.dtype) for k, v in per_token.items()})
        for r, (n, c) in enumerate(zip(lengths, completions)):
            end = n + len(c)
            out["input_ids"][r, :end] = torch.cat([ids[r, :n], torch.tensor(c)])
            out["attention_mask"][r, :end] = 1
            out["labels"][r, n:end] = torch.tensor(c)
            for k, v in per_token.items():
                out[k][r, :n], out[k][r, n:end] = v[r, :n], fill
        return {**out, **{k: v for k, v in enc.items() if torch.is_tensor(v)}}

    def generation_prompts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's prompts (the tokens before the first label) and their per-token tensors, padded on the left
        so that every answer starts right after its prompt."""
        keys = [k for k, v in batch.items() if k != "labels" and v.shape == batch["labels"].shape]
        lengths = (batch["labels"] == -100).int().argmin(1).tolist()
        width = max(lengths)
        prompt = {k: torch.zeros((len(lengths), width), dtype=batch[k].dtype, device=batch[k].device) for k in keys}
        prompt["input_ids"].fill_(self.tokenizer.pad_token_id)
        for r, n in enumerate(lengths):
            for k in keys:
                prompt[k][r, width - n :] = batch[k][r, :n]
        return prompt

    def generate_answers(
        self, model: nn.Module, data: MultimodalDataset, idx: np.ndarray, batch: dict[str, torch.Tensor]
    ) -> list[str]:
        prompt = self.generation_prompts(batch)
        images = {k: v for k, v in batch.items() if k not in prompt and k != "labels"}
        out = model.generate(
            **prompt,
            **images,
            max_new_tokens=(self.cfg.max_new_tokens or self.cfg.max_answer_length) + len(self._closing_ids),
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self._stop_ids(model),
        )
        width = prompt["input_ids"].shape[1]
        return [t.strip() for t in self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]

    def _stop_ids(self, model: nn.Module) -> list[int]:
        """eos, the checkpoint's generation eos ids, and the first token that closes a turn."""
        stop = model.generation_config.eos_token_id if model.generation_config is not None else None
        stop = list(stop) if isinstance(stop, (list, tuple)) else [stop] if stop is not None else []
        stop += [self.tokenizer.eos_token_id] + self._closing_ids[:1]
        return sorted({int(s) for s in stop if s is not None})
