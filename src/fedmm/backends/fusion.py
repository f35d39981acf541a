"""The fusion classifier of FedMAP (seed 000): a BERT-family text encoder and a ResNet image encoder, each projected,
concatenated -> Linear -> LayerNorm (or BatchNorm1d) -> ReLU -> dropout -> classifier.

Read top to bottom: config, encoders loading, the model, the backend glue.

Missing modalities: a batch without `input_ids` (or without `pixel_values`) skips that encoder and its projection
and uses a zero embedding in their place, so a text-only client never touches (or sends) image parameters.

A frozen text encoder is deterministic (eval mode, no gradients), so its pooled output for a token sequence is
memoised: data sets such as VQA repeat the same questions thousands of times. When *both* encoders are frozen (and
`cache_features` is on), `prepare` encodes a data set's texts and images once and later batches carry the cached
features instead of tokens and pixels, so rounds after the first train only the projections and the head. The cache
is keyed by the data set and the encoders' weights: new weights (another checkpoint) mean new features; on disk
(`model.cache_dir`), by a digest of the weights, the preprocessing and the data (backends/feature_cache.py).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch
from torch import nn

from fedmm.backends.configs import FusionConfig
from fedmm.backends.base import BACKENDS, Backend
from fedmm.backends.feature_cache import (
    FeatureCache,
    array_fingerprint,
    cache_root,
    entry_key,
    texts_fingerprint,
    weights_digest,
)
from fedmm.backends.loading import from_pretrained, image_stats, load_tokenizer
from fedmm.backends.mobilenet import MobileNetV2, is_mobilenet, load_mobilenet_v2
from fedmm.data.dataset import MultimodalDataset
from fedmm.console import say
from fedmm.errors import FedmmError
from fedmm.modelops import inject_lora, normalized_pixels

BERT_BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)
RESNET18 = dict(
    num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"
)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class SafeBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that does not fail on a training batch of one: it normalises with the running statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def weight_versions(*modules: nn.Module) -> tuple:
    """What changes whenever a weight of `modules` does: any write (loading, an in-place update) moves a
    parameter's storage or bumps its version counter, so memos keyed by this never outlive the weights."""
    return tuple((p.data_ptr(), p._version) for m in modules for p in m.parameters())


class FusionClassifier(nn.Module):
    def __init__(self, text_encoder: nn.Module, image_encoder: nn.Module, cfg: FusionConfig, num_labels: int):
        super().__init__()
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.pooling = cfg.text_pooling
        text_hidden = text_encoder.config.hidden_size
        image_hidden = getattr(image_encoder, "out_features", None) or image_encoder.config.hidden_sizes[-1]
        self.text_proj = nn.Linear(text_hidden, cfg.text_dim)
        self.image_proj = nn.Linear(image_hidden, cfg.image_dim)
        self.fusion = nn.Linear(cfg.text_dim + cfg.image_dim, cfg.fusion_dim)
        self.norm = nn.LayerNorm(cfg.fusion_dim) if cfg.norm == "layernorm" else SafeBatchNorm1d(cfg.fusion_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.fusion_dim, num_labels)
        self._text_memo: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._text_memo_weights: tuple = ()  # the text encoder's weight versions the memo was computed with
        self.memo_size = 200_000

    def _frozen(self, module: nn.Module) -> bool:
        return not any(p.requires_grad for p in module.parameters())

    def train(self, mode: bool = True) -> "FusionClassifier":
        super().train(mode)
        for enc in (self.text_encoder, self.image_encoder):  # frozen encoders stay deterministic
            if self._frozen(enc):
                enc.eval()
        return self

    def _pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)
        return out.last_hidden_state[:, 0]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self._frozen(self.text_encoder):
            return self._pool(input_ids, attention_mask)
        # Memoised path. Misses are encoded in groups of equal length without padding, so a sequence's embedding
        # does not depend on which batch it first appeared in (runs stay reproducible, resumed or not).
        weights = weight_versions(self.text_encoder)  # new weights: forget the old vectors
        if weights != self._text_memo_weights:
            self._text_memo.clear()
            self._text_memo_weights = weights
        lengths = attention_mask.sum(1).tolist()
        ids_np = input_ids.cpu().numpy()
        keys = [ids_np[i, :n].tobytes() for i, n in enumerate(lengths)]
        misses: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            if k not in self._text_memo:
                misses.setdefault(lengths[i], []).append(i)
        with torch.no_grad():
            for n, rows in misses.items():
                ids = input_ids[rows, :n]
                pooled = self._pool(ids, torch.ones_like(ids))
                for r, vec in zip(rows, pooled):
                    self._text_memo[keys[r]] = vec
            while len(self._text_memo) > self.memo_size:
                self._text_memo.popitem(last=False)
        return torch.stack([self._text_memo[k] for k in keys])

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen(self.image_encoder)):
            out = self.image_encoder(pixel_values=pixel_values)
        return (out if torch.is_tensor(out) else out.pooler_output).flatten(1)  # MobileNetV2 gives the tensor

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        image_index: Optional[torch.Tensor] = None,
        text_features: Optional[torch.Tensor] = None,
        image_features: Optional[torch.Tensor] = None,
        text_present: Optional[torch.Tensor] = None,
        image_present: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """`pixel_values` may hold each distinct image of the batch once; `image_index` then maps rows to them.
        `text_features` / `image_features` (the frozen encoders' cached outputs) stand in for tokens / pixels.
        `text_present` / `image_present` (0/1 per row) give the rows that lack a modality a zero embedding for it,
        as a client without that modality has for all its rows."""
        if text_features is None and input_ids is not None:
            text_features = self.encode_text(input_ids, attention_mask)
        if image_features is None and pixel_values is not None:
            image_features = self.encode_image(pixel_values)
            image_features = image_features[image_index] if image_index is not None else image_features
        if text_features is None and image_features is None:
            raise ValueError("a batch needs at least one modality")
        b = (text_features if text_features is not None else image_features).shape[0]
        dev = self.classifier.weight.device
        t = (
            self.text_proj(text_features)
            if text_features is not None
            else torch.zeros(b, self.text_proj.out_features, device=dev)
        )
        v = (
            self.image_proj(image_features)
            if image_features is not None
            else torch.zeros(b, self.image_proj.out_features, device=dev)
        )
        if text_present is not None:
            t = t * text_present.to(t.dtype)[:, None]
        if image_present is not None:
            v = v * image_present.to(v.dtype)[:, None]
        h = self.dropout(torch.relu(self.norm(self.fusion(torch.cat([t, v], dim=1)))))
        return self.classifier(h)


@BACKENDS.register("fusion", FusionConfig)
class FusionBackend(Backend):
    cfg: FusionConfig
    per_sample_missing = True  # a sample may lack a modality (a zero embedding for it)

    def __init__(self, cfg: FusionConfig, num_labels: int, multilabel: bool):
        super().__init__(cfg, num_labels, multilabel)
        if cfg.text_pooling not in ("pooler", "cls", "mean"):
            raise FedmmError(f"model.text_pooling must be pooler, cls or mean (got '{cfg.text_pooling}')")
        if cfg.norm not in ("layernorm", "batchnorm"):
            raise FedmmError(f"model.norm must be layernorm or batchnorm (got '{cfg.norm}')")
        self.tokenizer = load_tokenizer(cfg.tokenizer, cfg.text_encoder, "text_encoder")
        self._token_cache: dict[str, list[int]] = {}  # text -> token ids: data sets repeat texts across rounds
        self.max_length = cfg.max_text_length  # capped at the text encoder's positions when the model is built
        # id(data set) -> (a weak reference to it, the encoders' weight versions, text features [N, H] | None,
        # its image table's features [M, H] | None)
        self._features: dict[int, tuple] = {}
        self._tables: dict[int, tuple] = {}  # id(image table) -> (a reference to it, weights digest, features)
        self._digests: dict[int, tuple] = {}  # id(encoder) -> (weight versions, SHA-256 of its weights)
        mean, std = self.image_stats()
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def image_stats(self) -> tuple[list[float], list[float]]:
        """The mean and std pixels are normalised with: the config's, else those the pretrained image encoder was
        trained with (its preprocessor_config.json), else ImageNet's (what ResNets are trained on)."""
        cfg = self.cfg
        mean, std = list(cfg.image_mean), list(cfg.image_std)
        if (mean or std) and not (len(mean) == 3 and len(std) == 3):
            raise FedmmError("model.image_mean and model.image_std need 3 values each (one per RGB channel)")
        if not mean and cfg.image_encoder and not is_mobilenet(cfg.image_encoder):
            mean, std = image_stats(cfg.image_encoder) or ([], [])
        return (mean, std) if mean else (IMAGENET_MEAN, IMAGENET_STD)

    def build_model(self, seed: int = 0, meta: bool = False, weights: bool = True) -> FusionClassifier:
        """The model; with `meta`, on the meta device from the encoders' configs alone (no weights read); without
        `weights`, on the CPU from those configs with random values (an exported model's tensors go on top)."""
        from transformers import AutoConfig, AutoModel, BertConfig, BertModel, ResNetConfig, ResNetModel

        weights = weights and not meta

        def pretrained(cls, name: str, what: str, key: str):
            if weights:
                return from_pretrained(cls.from_pretrained, name, what, key)
            config = from_pretrained(AutoConfig.from_pretrained, name, what, key)
            return AutoModel.from_config(config) if cls is AutoModel else cls(config)

        cfg = self.cfg
        with torch.random.fork_rng(devices=[]), torch.device("meta" if meta else "cpu"):
            torch.manual_seed(seed)
            if cfg.text_encoder:
                text = pretrained(AutoModel, cfg.text_encoder, "text encoder", "text_encoder")
            else:
                tc = dict(cfg.text_config or BERT_BASE)
                tc.setdefault("vocab_size", len(self.tokenizer))
                text = BertModel(BertConfig(**tc))
            if is_mobilenet(cfg.image_encoder):  # ImageNet weights, authenticated (backends/mobilenet.py)
                image = load_mobilenet_v2(cfg.image_encoder) if weights else MobileNetV2()
            elif cfg.image_encoder:
                image = pretrained(ResNetModel, cfg.image_encoder, "image encoder", "image_encoder")
            else:
                image = ResNetModel(ResNetConfig(**dict(cfg.image_config or RESNET18)))
            positions = getattr(text.config, "max_position_embeddings", None)
            if positions and cfg.max_text_length > positions and self.max_length > positions:
                say(
                    f"model.max_text_length={cfg.max_text_length} exceeds the text encoder's {positions} positions: "
                    f"texts are cut at {positions} tokens"
                )
            self.max_length = min(cfg.max_text_length, positions or cfg.max_text_length)
            if text.get_input_embeddings().num_embeddings < len(self.tokenizer):
                raise FedmmError(
                    f"tokenizer has {len(self.tokenizer)} tokens but the text encoder only "
                    f"{text.get_input_embeddings().num_embeddings}; set model.tokenizer to match"
                )
            for enc, frozen in ((text, cfg.freeze_text or cfg.lora_r > 0), (image, cfg.freeze_image)):
                enc.requires_grad_(not frozen)
            if cfg.lora_r > 0:
                text = inject_lora(
                    text,
                    cfg.lora_r,
                    cfg.lora_alpha,
                    cfg.lora_dropout,
                    cfg.lora_targets,
                    "the text encoder",
                    "BERT's are query, key, value, dense",
                )
            model = FusionClassifier(text, image, cfg, self.num_labels)
        return model.train()

    def meta_model(self) -> FusionClassifier:
        return self.build_model(meta=True)

    def key_modality(self, key: str) -> str:
        if key.startswith(("text_encoder.", "text_proj.")):
            return "text"
        if key.startswith(("image_encoder.", "image_proj.")):
            return "image"
        return "shared"

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded input ids and attention mask; each distinct text is tokenized once per backend."""
        cache = self._token_cache
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            if len(cache) > 1_000_000:
                cache.clear()
            enc = self.tokenizer(missing, truncation=True, max_length=self.max_length)["input_ids"]
            cache.update(zip(missing, enc))
        rows = [cache[t] for t in texts]
        ids = np.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    @torch.no_grad()
    def prepare(self, model: nn.Module, data: MultimodalDataset) -> None:
        """With both encoders frozen, encode `data` once (or find it encoded by these very weights): its distinct
        texts, and its whole image table (shared by every client's subset, so encoded once for all of them), from
        the disk cache when an earlier run stored them (backends/feature_cache.py)."""
        enc = (model.text_encoder, model.image_encoder)
        if not (self.cfg.cache_features and all(model._frozen(e) for e in enc)):
            self._features.pop(id(data), None)
            return
        weights = weight_versions(*enc)
        cached = self._features.get(id(data))
        if cached is not None and cached[0]() is data and cached[1] == weights:
            return
        was_training = model.training
        model.eval()
        text = self._text_features(model, data.texts) if data.texts is not None else None
        image = self._image_table(model, data.images) if data.images is not None else None
        model.train(was_training)
        if id(data) not in self._features:  # the entry goes when the data set does
            weakref.finalize(data, self._features.pop, id(data), None)
        self._features[id(data)] = (weakref.ref(data), weights, text, image)

    def _digest(self, module: nn.Module) -> str:
        """The weights' SHA-256, recomputed only when a weight changed."""
        version = weight_versions(module)
        memo = self._digests.get(id(module))
        if memo is None or memo[0] != version:
            memo = self._digests[id(module)] = (version, weights_digest(module))
        return memo[1]

    def _stored(self, key: Optional[str], compute) -> torch.Tensor:
        if key is None or self.cfg.cache_dir == "none":
            return compute()
        return FeatureCache(cache_root(self.cfg.cache_dir)).get_or_compute(key, compute)

    def _text_features(self, model: FusionClassifier, texts) -> torch.Tensor:
        distinct = sorted(set(texts))
        device = next(model.parameters()).device

        def encode() -> torch.Tensor:
            chunks = [
                model.encode_text(*(t.to(device) for t in self.tokenize(distinct[i : i + 256]))).float().cpu()
                for i in range(0, len(distinct), 256)
            ]
            return torch.cat(chunks) if chunks else torch.zeros(0, model.text_proj.in_features)

        cfg = self.cfg
        key = entry_key(
            kind="text",
            weights=self._digest(model.text_encoder),
            encoder=cfg.text_encoder,
            tokenizer=[cfg.tokenizer, len(self.tokenizer)],
            max_length=self.max_length,
            pooling=cfg.text_pooling,
            data=texts_fingerprint(distinct),
        )
        row = {t: i for i, t in enumerate(distinct)}
        return self._stored(key, encode)[torch.as_tensor([row[t] for t in texts], dtype=torch.long)]

    def _image_table(self, model: FusionClassifier, images) -> torch.Tensor:
        memo = self._tables.get(id(images))
        digest = self._digest(model.image_encoder)
        if memo is not None and memo[0]() is images and memo[1] == digest:
            return memo[2]
        device = next(model.parameters()).device
        ids = np.arange(len(images))

        def encode() -> torch.Tensor:
            chunks = [
                model.encode_image(self._pixels(images, ids[i : i + 128]).to(device)).float().cpu()
                for i in range(0, len(ids), 128)
            ]
            return torch.cat(chunks) if chunks else torch.zeros(0, model.image_proj.in_features)

        key = None
        if isinstance(images, np.ndarray):  # lazily read image stores (VQA v2) are encoded, not stored on disk
            key = entry_key(
                kind="image",
                weights=digest,
                encoder=self.cfg.image_encoder,
                image_size=self.cfg.image_size,
                mean=self._mean.flatten().tolist(),
                std=self._std.flatten().tolist(),
                resize="bilinear",
                data=array_fingerprint(images),
            )
        table = self._stored(key, encode)
        try:
            ref = weakref.ref(images)
        except TypeError:
            ref = lambda: images  # noqa: E731 (a store without weak references lives as long as the backend)
        self._tables[id(images)] = (ref, digest, table)
        return table

    def _pixels(self, images, image_ids: np.ndarray) -> torch.Tensor:
        return normalized_pixels(
            np.stack([images[j] for j in image_ids]), self.cfg.image_size, self._mean, self._std, mode="bilinear"
        )

    def collate(self, data: MultimodalDataset, idx: np.ndarray) -> dict[str, torch.Tensor]:
        labels = data.labels[idx]
        batch = {"labels": torch.from_numpy(labels.astype(np.float32) if data.multilabel else labels)}
        for key in ("text_present", "image_present"):  # samples that lack a modality (modality.sample_missing_*)
            present = getattr(data, key)
            if present is not None:
                batch[key] = torch.from_numpy(present[idx].astype(np.float32))
        cached = self._features.get(id(data))
        if cached is not None and cached[0]() is data:  # prepared: the frozen encoders' outputs
            _, _, text, image = cached
            if text is not None:
                batch["text_features"] = text[idx]
            if image is not None:
                batch["image_features"] = image[torch.from_numpy(data.image_ids[idx])]
            return batch
        if data.texts is not None:
            batch["input_ids"], batch["attention_mask"] = self.tokenize([data.texts[i] for i in idx])
        if data.images is not None:
            # VQA-style data asks many questions about one image: encode each distinct image of the batch once.
            # (Never down to one image: BatchNorm cannot train on a batch of one.)
            uniq, inverse = np.unique(data.image_ids[idx], return_inverse=True)
            if 1 < len(uniq) < len(idx):
                batch["image_index"] = torch.from_numpy(inverse.astype(np.int64))
            else:
                uniq = data.image_ids[idx]
            batch["pixel_values"] = self._pixels(data.images, uniq)
        return batch
