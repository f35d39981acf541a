"""`fedmm info`: what a model costs before anything is downloaded or trained. The model is built on the meta device
(shapes only, no memory, no weights), so the full-size presets can be sized on a laptop."""
from __future__ import annotations

from fedmm.backends import BACKENDS
from fedmm.config import Settings
from fedmm.data.tasks import load_task


def model_summary(settings: Settings) -> str:
    data = load_task(settings.task, settings.seed)  # the label space sizes a classifier's head
    backend = BACKENDS.get(settings.model.name).factory(settings.model, data.train.num_labels,
                                                       data.train.multilabel)
    model = backend.meta_model()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    keys = set(backend.trainable_keys(model))
    travel_bytes = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k in keys)
    lines = [f"model {settings.model.name} (task {settings.task.name}, {data.train.num_labels} labels)",
             f"  parameters: {total:,}",
             f"  trainable:  {trainable:,} ({100 * trainable / max(total, 1):.4f}%)",
             f"  per update: {travel_bytes:,} bytes of trainable tensors ({len(keys)} tensors; "
             f"{travel_bytes / 1e6:.2f} MB up per client per round, the same down)"]
    if backend.sized_from:
        lines.append(f"  shapes: {backend.sized_from}")
    return "\n".join(lines)
