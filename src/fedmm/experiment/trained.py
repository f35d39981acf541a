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


@dataclass
class TrainedModel:
    """A trained fedmm model ready to predict: `.model` is the torch module, `.backend` how it batches inputs."""

    backend: Backend
    model: torch.nn.Module
    label_names: tuple[str, ...]
    multilabel: bool
    image_size: int  # images are decoded to this size first, as the task decoded them in training
    info: dict[str, Any] = field(default_factory=dict)  # where it came from: run, checkpoint, round

    def predict(
        self,
        images: Sequence[Any],
        texts: Optional[Sequence[str]] = None,
        top_k: int = 3,
        batch_size: int = 64,
    ) -> list[dict[str, Any]]:
        """One result per input: `prediction` and `top` ([label, probability] pairs, best first); multilabel:
        `labels` (every label at p >= 0.5) and `probabilities`. `images`: PIL images, paths or encoded bytes."""
        data = self.dataset(images, texts)
        _, logits = self.backend.predict(self.model, data, batch_size)
        return self.results(logits, top_k)

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
            label_names=self.label_names,
            texts=list(texts) if texts is not None else None,
            images=table,
            image_ids=np.arange(n, dtype=np.int64),
        )

    def results(self, logits: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        names = self.label_names
        if self.multilabel:
            probs = 1.0 / (1.0 + np.exp(-logits))
            return [
                {
                    "labels": [names[j] for j in np.flatnonzero(p >= 0.5)],
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
    return TrainedModel(
        backend=parts.backend,
        model=parts.model,
        label_names=tuple(data.train.label_names),
        multilabel=data.train.multilabel,
        image_size=int(getattr(settings.task, "image_size", 0) or data.test.images.shape[1]),
        info={"run": str(rd.path), "checkpoint": source, "round": rnd, "settings": settings},
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
    return TrainedModel(backend, model, tuple(meta["labels"]), bool(meta["multilabel"]), int(meta["image_size"]), meta)


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


def export_model(run_dir: Union[str, Path], out: Union[str, Path], checkpoint: str = "best") -> Path:
    """A self-contained folder of the run's model (see the module's docstring) with a model card (README.md)."""
    from fedmm.backends.fusion import FusionBackend

    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise FedmmError(f"{out} is not empty; choose a new folder for the export")
    trained = load_model(run_dir, checkpoint)
    backend, model = trained.backend, trained.model
    if not isinstance(backend, FusionBackend):
        raise FedmmError(
            f"model={backend.cfg.name}: fedmm export model writes fusion classifiers; its adapters are in "
            f"{trained.info['run']}/{trained.info['checkpoint']}"
        )
    out.mkdir(parents=True, exist_ok=True)
    cfg = asdict(backend.cfg)
    model.text_encoder.config.save_pretrained(out / "text_encoder")
    backend.tokenizer.save_pretrained(out / "text_encoder")
    cfg.update(text_encoder="text_encoder", tokenizer="text_encoder", cache_features=False, cache_dir="none")
    if hasattr(model.image_encoder, "config"):  # a Hugging Face ResNet: its config; MobileNetV2's shape is fixed
        model.image_encoder.config.save_pretrained(out / "image_encoder")
        cfg["image_encoder"] = "image_encoder"
    cfg["image_mean"], cfg["image_std"] = backend.image_stats()
    tensors = {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}
    save_params(out / "model.safetensors", tensors)
    meta = {
        "fedmm_version": _version(),
        "model": cfg,
        "labels": list(trained.label_names),
        "multilabel": trained.multilabel,
        "image_size": trained.image_size,
        "source": {k: v for k, v in trained.info.items() if k != "settings"},
    }
    atomic_write_bytes(out / EXPORT_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    atomic_write_bytes(out / "README.md", model_card(trained, meta).encode())
    return out


def _version() -> str:
    from fedmm import __version__

    return __version__


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
        "Load it with `fedmm.load_model(THIS_FOLDER)`; `.predict(images, texts)` gives the labels below.",
        "",
        "| | |",
        "|---|---|",
        f"| task | {s.task.name} ({'multilabel' if trained.multilabel else 'single-label'}) |",
        f"| labels | {', '.join(trained.label_names)} |",
        f"| model | {s.model.name} (fusion of a text and an image encoder) |",
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
    results: list[dict[str, Any]] = []
    for start in range(0, len(rows), 1024):  # bounded memory: decoded images of one chunk at a time
        chunk = rows[start : start + 1024]
        data = MultimodalDataset(
            labels=np.zeros((len(chunk), len(model.label_names)) if model.multilabel else len(chunk), np.int64),
            label_names=model.label_names,
            texts=[t for _, _, t in chunk] if reads_text else None,
            images=np.stack([p for _, p, _ in chunk]),
            image_ids=np.arange(len(chunk), dtype=np.int64),
        )
        _, logits = model.backend.predict(model.model, data, batch_size)
        results += model.results(logits, top_k)
    lines = []
    if dst.suffix == ".jsonl":
        lines = [json.dumps({"row": w, **r}) + "\n" for (w, _, _), r in zip(rows, results)]
        text = "".join(lines)
    else:
        import io

        buf = io.StringIO()
        key = "labels" if model.multilabel else "prediction"
        writer = csv.writer(buf)
        writer.writerow(["row", key, "top" if not model.multilabel else "probabilities"])
        for (w, _, _), r in zip(rows, results):
            value = "|".join(r["labels"]) if model.multilabel else r["prediction"]
            writer.writerow([w, value, json.dumps(r["probabilities"] if model.multilabel else r["top"])])
        text = buf.getvalue()
    atomic_write_bytes(dst, text.encode())
    return len(results), len(bad.skipped)
