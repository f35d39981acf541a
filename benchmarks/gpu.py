"""The GPU row: full-size VLM shapes with LoRA on one CUDA GPU, K=2 clients on the embedded runtime.

`blip_vqa` at blip-vqa-base's shapes (random initialisation: the weights do not matter for speed or memory) in fp32
and bf16, and `januspro` at Janus-Pro-1B's shapes in bf16, on generative easy-VQA (shipped with fedmm's
dependencies, images resized to the model's 384 px): training samples per second (the clients' examples x local
epochs over their summed training time), peak GPU memory (torch's max_memory_allocated over the whole run,
evaluation included) and seconds per round (median). Each configuration runs in its own process. About 5 minutes on
an H100-class GPU.

    python3 dev.py bench gpu            # writes docs/benchmarks/gpu.{json,md}; needs a CUDA GPU
    python3 dev.py bench gpu --smoke    # the same script with the tiny models on the CPU (checks the script only)
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "gpu"
SMOKE = "--smoke" in sys.argv
COMMON = [
    "task=easyvqa_gen",
    "num_clients=2",
    "partition=iid",
    "rounds=3",
    "local_epochs=1",
    "batch_size=16",
    "max_train_samples=1024",
    "max_eval_samples=256",
    "eval_batch_size=32",
    "modality.text_only=[]",
    "modality.image_only=[]",
    "progress=false",
]
# Janus-Pro-1B's language model (transformers' JanusConfig defaults are the 7B's); its vision tower is the default.
JANUS_1B = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16
)
FULL = {
    "blip_vqa (blip-vqa-base shapes), fp32": ["model=blip_vqa", "model.pretrained=''", "precision=fp32"],
    "blip_vqa (blip-vqa-base shapes), bf16": ["model=blip_vqa", "model.pretrained=''", "precision=bf16"],
    "januspro (Janus-Pro-1B shapes), bf16": [
        "model=januspro",
        "model.pretrained=''",
        "precision=bf16",
        "model.text_config={" + ",".join(f"{k}:{v}" for k, v in JANUS_1B.items()) + "}",
    ],
}
TINY = {
    "blip_vqa_tiny, fp32 (smoke)": ["model=blip_vqa_tiny", "rounds=1", "max_train_samples=64", "max_eval_samples=32"],
    "januspro_tiny, fp32 (smoke)": ["model=januspro_tiny", "rounds=1", "max_train_samples=64", "max_eval_samples=32"],
}

# One configuration in a fresh process: the run, then its peak GPU memory, printed as JSON on the last line.
CHILD = """
import json, sys, torch
from fedmm.api import load_settings, run_federated
final = run_federated(load_settings(sys.argv[1:]))
peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
print(json.dumps({"peak_mb": peak, "final": final}))
"""


def measure(label: str, args: list[str], i: int) -> dict:
    run_dir = OUT / f"run-{i}"
    device = "device=cpu" if SMOKE else "device=cuda"
    cmd = [sys.executable, "-c", CHILD, *COMMON, *args, device, f"output_dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = sum(r["num_examples"] for r in records)  # one local epoch per round
    return {
        "config": label,
        "samples_per_s": trained / sum(r["client_seconds"] for r in records),
        "peak_gpu_mb": result["peak_mb"],
        "round_s": statistics.median(r["seconds"] for r in records),
        "vqa_accuracy": records[-1].get("eval_vqa_accuracy"),
    }


def main() -> int:
    import torch

    if not SMOKE and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run this on a GPU machine, or --smoke to check the script on the CPU")
    gpu = "CPU (smoke)" if SMOKE else torch.cuda.get_device_name(0)
    rows = [measure(label, args, i) for i, (label, args) in enumerate((TINY if SMOKE else FULL).items())]
    lines = ["| configuration | training samples/s | peak GPU memory (MiB) | seconds per round |", "|---|---|---|---|"]
    lines += [
        f"| {r['config']} | {r['samples_per_s']:.1f} | {r['peak_gpu_mb']:.0f} | {r['round_s']:.1f} |" for r in rows
    ]
    table = "\n".join(lines)
    meta = {
        "command": "python3 dev.py bench gpu" + (" --smoke" if SMOKE else ""),
        "date": date.today().isoformat(),
        "machine": f"{gpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}",
        "overrides": COMMON,
    }
    print(table)
    if SMOKE:  # checks the script; the committed page keeps the GPU's figures
        return 0
    dest = ROOT / "docs" / "benchmarks"
    (dest / "gpu.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    (dest / "gpu.md").write_text(
        f"# The GPU row\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\nCommand: `{meta['command']}` ({meta['date']}, "
        f"{meta['machine']}).\nOverrides: `{' '.join(COMMON)}`\n\n{table}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
