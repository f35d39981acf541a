"""The per-client table printed before training (and by `fedmm prepare`): examples, modalities, label counts."""

from __future__ import annotations

from typing import Any, Optional

from fedmm.data.dataset import MultimodalDataset


def partition_summary(
    clients: list[MultimodalDataset], tests: Optional[list[Optional[MultimodalDataset]]] = None
) -> list[dict[str, Any]]:
    """Per client: examples, modalities, label counts, and (when set) how many samples lack their image or text
    (`missing_image`, `missing_text`), how many labels noise changed (`noisy_labels`) and how many examples the
    site holds out as its own test data (`test_examples`, client_eval)."""
    names = clients[0].label_names
    tests = tests or [None] * len(clients)

    def robustness(c: MultimodalDataset) -> dict[str, int]:
        out = {}
        for key, mask in (("missing_image", c.image_present), ("missing_text", c.text_present)):
            if mask is not None:
                out[key] = int((~mask).sum())
        if c.noisy_labels is not None:
            out["noisy_labels"] = int(c.noisy_labels.sum())
        if c.unlabelled:
            out["missing_labels"] = c.unlabelled
        if c.sites is not None and len(c):
            out["site"] = str(c.sites[0])  # the natural-id split: the site this client is
        return out

    return [
        {
            "client": k,
            "num_examples": len(c),
            "modalities": sorted(c.modalities),
            "label_counts": {n: int(v) for n, v in zip(names, c.label_counts())},
            **robustness(c),
            **({"test_examples": len(t)} if t is not None else {}),
        }
        for k, (c, t) in enumerate(zip(clients, tests))
    ]


def format_partition(summary: list[dict[str, Any]]) -> str:
    """Clients as rows and labels as columns; with many labels (MM-IMDb's 23 genres), labels as rows instead, and
    with many labels and many clients, each client's five most frequent labels."""
    names = list(summary[0]["label_counts"])
    w = min(12, max(len(n) for n in names) + 1)
    if len(names) > 16 and len(summary) <= 16:
        rows = [
            f"{'':<{w}}" + "".join(f" {'client ' + str(s['client']):>10}" for s in summary),
            f"{'examples':<{w}}" + "".join(f" {s['num_examples']:>10}" for s in summary),
            f"{'modalities':<{w}}" + "".join(f" {'+'.join(s['modalities']):>10}" for s in summary),
        ]
        rows += [f"{n[:w]:<{w}}" + "".join(f" {s['label_counts'][n]:>10}" for s in summary) for n in names]
        return "\n".join(rows)
    show = names if len(names) <= 16 else None
    head = f"{'client':>6} {'examples':>8} {'modalities':<11}"
    head += "".join(f" {n[:w]:>{w}}" for n in show) if show else "  top labels"
    rows = [head]
    for s in summary:
        row = f"{s['client']:>6} {s['num_examples']:>8} {'+'.join(s['modalities']):<11}"
        counts = s["label_counts"]
        if show:
            row += "".join(f" {counts[n]:>{w}}" for n in show)
        else:
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
            row += "  " + ", ".join(f"{n}:{c}" for n, c in top)
        rows.append(row)
    return "\n".join(rows)
