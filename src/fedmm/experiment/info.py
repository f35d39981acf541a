"""`fedmm info`: what a model costs before anything is downloaded or trained. The model is built on the meta device
(shapes only, no memory, no weights), so the full-size presets can be sized on a laptop."""

from __future__ import annotations

from fedmm.config import Settings
from fedmm.experiment.assemble import assemble


def model_summary(settings: Settings) -> str:
    parts = assemble(settings, "info")  # the task's label space sizes a classifier's head
    model, keys = parts.model, set(parts.keys)
    labels = f"{parts.data.train.num_labels} labels" if parts.data is not None else "answers generated"
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    travel_bytes = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k in keys)
    lines = [
        f"model {settings.model.name} (task {settings.task.name}, {labels})",
        f"  parameters: {total:,}",
        f"  trainable:  {trainable:,} ({100 * trainable / max(total, 1):.4f}%)",
        f"  per update: {travel_bytes:,} bytes of trainable tensors ({len(keys)} tensors; "
        f"{travel_bytes / 1e6:.2f} MB up per client per round, the same down)",
    ]
    if parts.backend.sized_from:
        lines.append(f"  shapes: {parts.backend.sized_from}")
    return "\n".join(lines)
