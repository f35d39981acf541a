"""A trained model out of fedmm: `load_model` (a run directory or an exported folder), `predict` on new images and
texts, and `export_model` to a self-contained folder with a model card.

A fusion classifier's export holds every tensor (the frozen encoders included) in model.safetensors, the encoders'
configs and the tokenizer as Hugging Face folders, the label names and the preprocessing (fedmm_model.json): the
model is rebuilt from those configs with random values and the tensors go on top, so loading needs neither the run
directory nor the packages the encoders' weights came from (MiniLM, MobileNetV2). It is not a transformers
`AutoModel`: the fusion head, the pooling and the missing-modality rule are fedmm's, so `fedmm.load_model` reads it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from fedmm.backends.base import Backend
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.images import read_rgb
from fedmm.errors import FedmmError
from fedmm.params import atomic_write_bytes, load_params, save_params

EXPORT_FILE = "fedmm_model.json"
CHUNK = 256  # rows predicted at a time by fedmm predict


@dataclass
class TrainedModel:
    """A trained fedmm model ready to predict: `.model` is the torch module, `.backend` how it batches inputs."""

    backend: Backend
    model: torch.nn.Module
    label_names: tuple[str, ...]
    multilabel: bool
    image_size: int  # images are decoded to this size first, as the task decoded them in training
    info: dict[str, Any] = field(default_factory=dict)  # where it came from: run, checkpoint, round
    thresholds: Optional[list[float]] = None  # multilabel: per label, tuned on the validation split (else 0.5)

    def predict(
        self,
        images: Sequence[Any],
        texts: Optional[Sequence[str]] = None,
        top_k: int = 3,
        batch_size: int = 64,
    ) -> list[dict[str, Any]]:
        """One result per input: `prediction` and `top` ([label, probability] pairs, best first); multilabel:
        `labels` (every label at p >= its threshold: tuned on the validation split with task.tune_thresholds,
        else 0.5) and `probabilities`; a VQA model: `answer`. `images`: PIL images, paths or encoded bytes."""
        data = self.dataset(images, texts)
        if self.generative:
            return [{"answer": a} for a in self.answers(data, batch_size)]
        _, logits = self.backend.predict(self.model, data, batch_size)
        return self.results(logits, top_k)

    @property
    def generative(self) -> bool:
        """A VQA backend: it generates an answer instead of scoring labels."""
        return hasattr(self.backend, "generate_answers")

    @torch.no_grad()
    def answers(self, data: MultimodalDataset, batch_size: int = 64) -> list[str]:
        from fedmm.modelops import batch_indices, to_device

        device = next(self.model.parameters()).device
        out: list[str] = []
        for idx in batch_indices(len(data), batch_size):
            batch = to_device(self.backend.collate(data, idx), device)
            out += self.backend.generate_answers(self.model, data, idx, batch)
        return out

    def dataset(self, images: Sequence[Any], texts: Optional[Sequence[str]]) -> MultimodalDataset:
        from fedmm.data.images import png_bytes

        table = (
            np.stack([read_rgb(png_bytes(im) if hasattr(im, "convert") else im, self.image_size) for im in images])
            if len(images)
            else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        )
        n = len(table)
        if texts is not None and len(texts) != n:
            raise FedmmError(f"{len(texts)} texts for {n} images; give one text per image")
        shape = (n, len(self.label_names)) if self.multilabel else (n,)
        return MultimodalDataset(
            labels=np.zeros(shape, np.float32 if self.multilabel else np.int64),
            label_names=self.label_names or ("",),
            texts=list(texts) if texts is not None else None,
            images=table,
            image_ids=np.arange(n, dtype=np.int64),
        )

    def results(self, logits: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        names = self.label_names
        if self.multilabel:
            from fedmm.metrics import sigmoid

            probs = sigmoid(logits)
            cut = np.asarray(self.thresholds if self.thresholds is not None else [0.5] * len(names))
            return [
                {
                    "labels": [names[j] for j in np.flatnonzero(p >= cut)],
                    "probabilities": {names[j]: round(float(p[j]), 6) for j in range(len(names))},
                }
                for p in probs
            ]
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        out = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[: max(1, top_k)]
            out.append({"prediction": names[order[0]], "top": [[names[j], round(float(p[j]), 6)] for j in order]})
        return out


def _from_run(run_dir: Path, checkpoint: str) -> TrainedModel:
    from fedmm.experiment.assemble import assemble
    from fedmm.experiment.evaluate import checkpoint_params, evaluation_settings
    from fedmm.modelops import set_params
    from fedmm.rundir import RunDir

    rd = RunDir(run_dir)
    if checkpoint == "best" and not (rd.path / "best.safetensors").is_file():
        checkpoint = "last"  # a run without select_best: its last round is its model
    settings = evaluation_settings(rd.path, [])
    params, source, rnd = checkpoint_params(rd, checkpoint)
    parts = assemble(settings, "centralized")  # the label names are the task's: its data is read once
    set_params(parts.model, params)
    parts.model.eval()
    data = parts.data
    thresholds = None
    if data.tune_thresholds and data.train.multilabel and len(data.val):  # as the run's _tuned figures use them
        from fedmm import metrics as M

        _, val_logits = parts.backend.predict(parts.model, data.val, settings.eval_batch_size)
        thresholds = [float(t) for t in M.tune_thresholds(M.sigmoid(val_logits), data.val.labels)]
    return TrainedModel(
        backend=parts.backend,
        model=parts.model,
        label_names=tuple(data.train.label_names),
        multilabel=data.train.multilabel,
        image_size=int(getattr(settings.task, "image_size", 0) or data.test.images.shape[1]),
        info={"run": str(rd.path), "checkpoint": source, "round": rnd, "settings": settings},
        thresholds=thresholds,
    )


def _from_export(folder: Path) -> TrainedModel:
    from fedmm.registry import BACKENDS

    try:
        meta = json.loads((folder / EXPORT_FILE).read_text())
        entry = BACKENDS.get(meta["model"]["name"])
        cfg = entry.config_cls(**{**meta["model"], **_local(meta["model"], folder)})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FedmmError(
            f"{folder / EXPORT_FILE} is not an export fedmm wrote ({type(e).__name__}); export again"
        ) from None
    backend = entry.factory(cfg, len(meta["labels"]), bool(meta["multilabel"]))
    model = backend.build_model(seed=0, weights=False)
    tensors = {
        k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_params(folder / "model.safetensors").items()
    }
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise FedmmError(
            f"{folder / 'model.safetensors'} does not fit its config ({(missing or unexpected)[0]}); export again"
        )
    model.eval()
    labels, multilabel = tuple(meta["labels"]), bool(meta["multilabel"])
    return TrainedModel(backend, model, labels, multilabel, int(meta["image_size"]), meta, meta.get("thresholds"))


def _local(model_cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The export's relative encoder folders as paths on this machine."""
    out = {}
    for key in ("text_encoder", "image_encoder", "tokenizer"):
        value = model_cfg.get(key, "")
        if value and (folder / value).exists():
            out[key] = str(folder / value)
    return out


def load_model(path: Union[str, Path], checkpoint: str = "best") -> TrainedModel:
    """A trained model from a run directory (`checkpoint`: best, falling back to last without select_best; last;
    or a round number) or from a folder `fedmm export model` wrote."""
    folder = Path(path).expanduser()
    if (folder / EXPORT_FILE).is_file():
        return _from_export(folder)
    if (folder / "config.yaml").is_file():
        return _from_run(folder, checkpoint)
    raise FedmmError(f"{folder} is neither a run directory nor a fedmm export; give one of them")


EXPORT_FORMATS = {
    "fedmm": "a fusion classifier as a self-contained folder for fedmm.load_model",
    "peft": "LoRA backends: a PEFT adapter folder for PeftModel.from_pretrained(base, OUT)",
    "merged": "LoRA backends: the adapters merged into the model, save_pretrained output plus its processor",
}


def export_model(run_dir: Union[str, Path], out: Union[str, Path], checkpoint: str = "best", fmt: str = "") -> Path:
    """The run's model in format `fmt` (EXPORT_FORMATS; default fedmm for fusion classifiers, peft for LoRA backends),
    with a model card (README.md)."""
    from fedmm.backends.fusion import FusionBackend

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedmmError(f"{out} is not an empty folder; choose a new folder for the export")
    if not (Path(run_dir).expanduser() / "config.yaml").is_file():
        raise FedmmError(f"{run_dir} is not a run directory; fedmm export model reads a run written by fedmm run")
    trained = load_model(run_dir, checkpoint)
    fusion = isinstance(trained.backend, FusionBackend)
    fmt = fmt or ("fedmm" if fusion else "peft")
    if fmt not in EXPORT_FORMATS:
        raise FedmmError(f"--format must be one of {', '.join(EXPORT_FORMATS)} (got '{fmt}')")
    if (fmt == "fedmm") != fusion or not (fusion or trained.generative):
        usable = "fedmm" if fusion else "peft or merged"
        raise FedmmError(f"--format {fmt} is not for model={trained.backend.cfg.name}; use --format {usable}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "fedmm_version": _version(),
        "format": fmt,
        "labels": list(trained.label_names) if fusion else [],
        "multilabel": trained.multilabel,
        "image_size": trained.image_size,
        "thresholds": trained.thresholds,
        "source": {k: v for k, v in trained.info.items() if k != "settings"},
    }
    {"fedmm": _write_fusion, "peft": _write_peft, "merged": _write_merged}[fmt](trained, out, meta)
    atomic_write_bytes(out / "README.md", model_card(trained, meta).encode())
    return out


def _write_fusion(trained: TrainedModel, out: Path, meta: dict[str, Any]) -> None:
    backend, model = trained.backend, trained.model
    cfg = asdict(backend.cfg)
    model.text_encoder.config.save_pretrained(out / "text_encoder")
    backend.tokenizer.save_pretrained(out / "text_encoder")
    cfg.update(text_encoder="text_encoder", tokenizer="text_encoder", cache_features=False, cache_dir="none")
    if hasattr(model.image_encoder, "config"):  # a Hugging Face ResNet: its config; MobileNetV2's shape is fixed
        model.image_encoder.config.save_pretrained(out / "image_encoder")
        cfg["image_encoder"] = "image_encoder"
    cfg["image_mean"], cfg["image_std"] = backend.image_stats()
    save_params(
        out / "model.safetensors", {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}
    )
    atomic_write_bytes(out / EXPORT_FILE, (json.dumps({**meta, "model": cfg}, indent=2) + "\n").encode())


def _write_peft(trained: TrainedModel, out: Path, meta: dict[str, Any]) -> None:
    """adapter_config.json and adapter_model.safetensors as PeftModel.save_pretrained writes them (PEFT's key
    names: base_model.model.<module>.lora_A.weight), for the base checkpoint the run used."""
    import copy

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    base = trained.backend.cfg.pretrained
    if not base:
        raise FedmmError(
            "--format peft needs the base checkpoint the adapters go on (model.pretrained); this run's base was "
            "randomly initialised: use --format merged"
        )
    config = copy.deepcopy(trained.model.peft_config["default"])
    config.base_model_name_or_path = str(base)
    config.inference_mode = True
    config.save_pretrained(str(out))
    tensors = get_peft_model_state_dict(trained.model)
    save_file(
        {f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in tensors.items()},
        out / "adapter_model.safetensors",
    )
    _save_processor(trained, out)


def _write_merged(trained: TrainedModel, out: Path, meta: dict[str, Any]) -> None:
    """The adapters merged into their layers (W + scale * B A) and the model saved by its own save_pretrained."""
    import copy

    from peft.tuners.lora import LoraLayer

    model = copy.deepcopy(trained.model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    model.__dict__.pop("peft_config", None)  # a plain model now: save_pretrained writes all of it, not adapters
    model._hf_peft_config_loaded = False
    model.save_pretrained(str(out))
    _save_processor(trained, out)


def _save_processor(trained: TrainedModel, out: Path) -> None:
    """The tokenizer and image preprocessing the model was trained with, as the model family's processor."""
    backend = trained.backend
    mean, std = (t.flatten().tolist() for t in backend._pixel_stats)
    if backend.cfg.name == "blip_vqa":
        from transformers import BlipImageProcessor, BlipProcessor
        from transformers.image_utils import PILImageResampling

        size = int(backend.cfg.image_size)
        images = BlipImageProcessor(
            size={"height": size, "width": size}, resample=PILImageResampling.BICUBIC, image_mean=mean, image_std=std
        )
        BlipProcessor(image_processor=images, tokenizer=backend.tokenizer).save_pretrained(str(out))
        return
    backend.tokenizer.save_pretrained(str(out))
    if backend.cfg.pretrained:
        from transformers import AutoProcessor

        try:
            AutoProcessor.from_pretrained(backend.cfg.pretrained).save_pretrained(str(out))
        except (OSError, ValueError):  # a checkpoint without a processor: the tokenizer is there
            pass


def _version() -> str:
    """The installed fedmm's version (read from its metadata: this layer does not import the package's entry)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedmm")
    except PackageNotFoundError:
        return "unknown"


HOW_TO_LOAD = {
    "fedmm": "Load it with `fedmm.load_model(THIS_FOLDER)`; `.predict(images, texts)` gives the labels below.",
    "peft": "Load it with `peft.PeftModel.from_pretrained(<model class>.from_pretrained('{base}'), THIS_FOLDER)`; "
    "the processor (tokenizer and image preprocessing) is in this folder.",
    "merged": "Load it with the model class's own `from_pretrained(THIS_FOLDER)` (the adapters are merged); the "
    "processor is in this folder.",
}


def model_card(trained: TrainedModel, meta: dict[str, Any]) -> str:
    """The export's README.md: what the model is, where and how it was trained, and its figures."""
    from fedmm.rundir import RunDir

    info = trained.info
    settings = info["settings"]
    run = RunDir(info["run"])
    records = run.read_metrics()
    last = records[-1] if records else {}
    chosen = next((r for r in records if r.get("round") == info.get("round")), last)
    partition = json.loads((run.path / "partition.json").read_text()) if (run.path / "partition.json").exists() else []
    s = settings
    privacy = "none"
    if s.privacy.name == "dp":
        privacy = f"client-level DP ({s.privacy.mode}), epsilon {last.get('dp_epsilon')} at delta {s.privacy.delta}"
    if s.privacy.secure_aggregation:
        privacy += " + secure aggregation"
    lines = [
        f"# {s.task.name} / {s.model.name} / {s.strategy.name}: a federated fedmm model",
        "",
        HOW_TO_LOAD[meta["format"]].format(base=getattr(s.model, "pretrained", "")),
        "",
        "| | |",
        "|---|---|",
        f"| task | {s.task.name} ({'multilabel' if trained.multilabel else 'single-label'}) |",
        f"| labels | {', '.join(trained.label_names) if meta['labels'] else 'generated answers'} |",
        f"| model | {s.model.name} ({meta['format']} export) |",
        f"| strategy | {s.strategy.name} |",
        f"| rounds | {last.get('round')} of {s.rounds} |",
        f"| this model | {info.get('checkpoint')} (round {info.get('round')}) |",
        f"| privacy | {privacy} |",
        f"| fedmm | {meta['fedmm_version']} |",
        "",
        "## Sites",
        "",
        "| client | training examples | modalities |",
        "|---|---|---|",
    ]
    for i, p in enumerate(partition if isinstance(partition, list) else []):
        lines.append(f"| {i} | {p.get('num_examples')} | {'+'.join(p.get('modalities', []))} |")
    lines += ["", "## Figures (server test split, and the sites' own test data)", ""]
    lines += [
        f"- {k}: {v:.4f}"
        for k, v in chosen.items()
        if k.startswith(("eval_", "val_")) and not k.endswith("seconds") and isinstance(v, float)
    ]
    lines += [f"- {k}: {v:.4f}" for k, v in last.items() if k.startswith("client_eval_") and isinstance(v, float)]
    sites = last.get("client_eval") or {}
    if sites:  # each site's figures on its own held-out data, after the last round
        names = [k for k in next(iter(sites.values())) if k != "num_examples"]
        lines += ["", "| site | examples | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
        for cid, fig in sites.items():
            values = " | ".join(f"{fig.get(n, float('nan')):.4f}" for n in names)
            lines.append(f"| {cid} | {fig.get('num_examples')} | {values} |")
    lines += ["", "## Configuration", "", "```yaml", settings.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)


def predict_file(
    model: TrainedModel,
    path: Union[str, Path],
    output: Union[str, Path],
    image_column: str = "image",
    text_column: str = "text",
    on_bad_sample: str = "error",
    top_k: int = 3,
    batch_size: int = 64,
) -> tuple[int, int]:
    """`model` on every row of a CSV / JSONL / Parquet file in task=table's conventions (an image path relative to
    the file, or image bytes; a text column when the model reads text), written to `output` (.csv or .jsonl) one
    row per input in order; (rows written, bad rows skipped). A bad row is one line naming it."""
    import csv

    from fedmm.data.bad_samples import BadSamples
    from fedmm.data.table import FORMATS, _records
    from fedmm.params import atomic_write_bytes

    src, dst = Path(path).expanduser(), Path(output).expanduser()
    if src.suffix not in FORMATS or not src.is_file():
        raise FedmmError(f"--input {src}: give an existing {', '.join(FORMATS)} file")
    if dst.suffix not in (".csv", ".jsonl"):
        raise FedmmError(f"--output {dst}: fedmm writes .csv or .jsonl predictions")
    bad = BadSamples(on_bad_sample, option="--on-bad-sample")
    reads_text: Optional[bool] = None  # decided by the first row: with a text column, every row needs one
    rows: list[tuple[str, np.ndarray, str]] = []
    for row, where in _records(src):
        if not isinstance(row, dict) or image_column not in row:
            bad(f"{where}: no {image_column} column (--image-column)")
            continue
        reads_text = (text_column in row) if reads_text is None else reads_text
        text = row.get(text_column)
        if reads_text and text is None:
            bad(f"{where}: no {text_column} column (--text-column)")
            continue
        image = row[image_column]
        image = image.get("bytes") or image.get("path") if isinstance(image, dict) else image
        try:
            if isinstance(image, str):
                resolved = (src.parent / image.strip()).resolve()
                if not resolved.is_relative_to(src.parent.resolve()):
                    raise FedmmError(f"image '{image[:80]}' points outside {src.parent}")
                image = resolved
            if not isinstance(image, (bytes, Path)):
                raise FedmmError(f"the image is a {type(image).__name__}; give a path or image bytes")
            pixels = read_rgb(image, model.image_size)
        except (FedmmError, OSError, ValueError, RuntimeError) as e:
            bad(f"{where}: {e}")
            continue
        rows.append((where, pixels, "" if text is None else str(text)))
    for message in bad.skipped:  # one line per bad row
        print(f"skipped {message}", file=sys.stderr, flush=True)
    from tqdm import tqdm

    results: list[dict[str, Any]] = []
    chunks = range(0, len(rows), CHUNK)  # bounded memory: the decoded images of one chunk at a time
    for start in tqdm(chunks, desc="predict", unit="chunk", leave=False, disable=not sys.stderr.isatty() or None):
        chunk = rows[start : start + CHUNK]
        data = MultimodalDataset(
            labels=np.zeros((len(chunk), len(model.label_names)) if model.multilabel else len(chunk), np.int64),
            label_names=model.label_names,
            texts=[t for _, _, t in chunk] if reads_text else None,
            images=np.stack([p for _, p, _ in chunk]),
            image_ids=np.arange(len(chunk), dtype=np.int64),
        )
        if model.generative:
            results += [{"answer": a} for a in model.answers(data, batch_size)]
        else:
            _, logits = model.backend.predict(model.model, data, batch_size)
            results += model.results(logits, top_k)
    lines = []
    if dst.suffix == ".jsonl":
        lines = [json.dumps({"row": w, **r}) + "\n" for (w, _, _), r in zip(rows, results)]
        text = "".join(lines)
    else:
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        if model.generative:
            writer.writerow(["row", "answer"])
            writer.writerows([w, r["answer"]] for (w, _, _), r in zip(rows, results))
        else:
            key = "labels" if model.multilabel else "prediction"
            writer.writerow(["row", key, "top" if not model.multilabel else "probabilities"])
            for (w, _, _), r in zip(rows, results):
                value = "|".join(r["labels"]) if model.multilabel else r["prediction"]
                writer.writerow([w, value, json.dumps(r["probabilities"] if model.multilabel else r["top"])])
        text = buf.getvalue()
    atomic_write_bytes(dst, text.encode())
    return len(results), len(bad.skipped)
