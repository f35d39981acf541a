"""Vision-language backends: tiny BLIP-VQA through federated rounds on generative easy-VQA with only the LoRA adapters
travelling, and `fedmm info` sizing the full-size model on the meta device with no weights on disk."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import fedmm, untrained
from fedmm import cli
from fedmm.backends import BACKENDS
from fedmm.config import load_settings

BLIP_TINY = [
    "task=easyvqa_gen",
    "model=blip_vqa_tiny",
    "modality.text_only=[]",
    "modality.image_only=[]",
    "max_train_samples=240",
    "max_eval_samples=40",
    "batch_size=16",
    "lr=0.003",
    "progress=false",
]


def test_blip_tiny_two_federated_rounds_learn_and_send_only_the_adapters(tmp_path, capsys):
    args = [*BLIP_TINY, "rounds=2", "num_clients=3", "partition=iid", "lr=0.1"]
    code = cli.main(["run", *args, f"output_dir={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    # The untrained random model answers nothing right; two rounds of adapters teach it the commonest answers
    # (measured: vqa_accuracy 0 -> 0.375 and eval loss 5.26 -> 4.95).
    base = untrained(args, tmp_path)
    assert records[-1]["eval_vqa_accuracy"] >= base["vqa_accuracy"] + 0.2
    assert records[-1]["eval_loss"] < base["loss"] - 0.15
    adapters = load_file(str(tmp_path / "global.safetensors"))
    assert adapters and all("lora_" in k for k in adapters)  # the global model is the adapters, nothing else
    adapter_bytes = sum(v.nbytes for v in adapters.values())
    assert adapter_bytes == 8192  # r=4 on q and v of 2 encoder + 2 decoder layers: 16 tensors x 4 x 32 floats
    s = load_settings(BLIP_TINY)
    model = BACKENDS.get("blip_vqa").factory(s.model, 13, False).build_model()
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    for r in records:  # 3 clients each way; the rest is each message's header (names, shapes, metadata)
        for direction in ("bytes_up", "bytes_down"):
            assert 3 * adapter_bytes < r[direction] < 3 * (adapter_bytes + 4096) < 3 * model_bytes / 10


def test_fedmm_info_counts_the_seeds_blip_adapters_without_any_weights(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = fedmm("info", "model=blip_vqa")
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert "trainable:  1,179,648 (" in proc.stdout and "parameters: 362,409,788" in proc.stdout
    assert "4,718,592 bytes" in proc.stdout  # 1,179,648 float32 adapters per update
    assert not any((tmp_path / "empty-cache").rglob("*.safetensors"))


def test_fedumm_paper_is_the_nvflare_code_and_januspro_is_the_1b_without_any_weights():
    """experiment=fedumm_paper carries the FedUMM code's values (README: the table of the FedUMM preset), and `fedmm
    info` sizes it and Janus-Pro 1B from shapes alone: the code's 3,538,944 BLIP adapters (q/k/v of self- and
    cross-attention), and the 1B's 4,718,592 of 2,081,355,403 (JanusConfig's defaults alone are a 7B's)."""
    from fedmm.experiment.info import model_summary

    s = load_settings(["experiment=fedumm_paper", "num_clients=8", "partition.alpha=0.5"])
    assert (s.model.lora_dropout, s.model.max_question_length, s.model.max_answer_length) == (0.1, 64, 16)
    assert (s.model.max_new_tokens, s.weight_decay, s.strategy.weight_by, s.client_eval) == (5, 0.01, "steps", "every")
    assert (s.task.partition_by, s.task.client_test, s.task.vqa_metric) == ("answer", "eval_shards", "fedumm")
    assert (s.rounds, s.lr, s.lr_schedule, s.grad_accum_steps, s.local_epochs, s.batch_size) == (
        100,
        2e-5,
        "constant",
        8,
        5,
        32,
    )
    out = model_summary(s)
    assert "trainable:  3,538,944 (" in out and "parameters: 364,769,084" in out, out
    out = model_summary(load_settings(["model=januspro"]))
    assert "trainable:  4,718,592 (" in out and "parameters: 2,081,355,403" in out, out


@pytest.mark.parametrize("preset", ["fusion_tiny", "blip_vqa_tiny", "januspro_tiny", "hf_vlm_tiny"])
def test_meta_counts_equal_a_real_build(preset):
    s = load_settings([f"model={preset}"])
    backend = BACKENDS.get(s.model.name).factory(s.model, 13, False)
    meta, real = backend.meta_model(), backend.build_model(seed=0)
    assert all(p.is_meta for p in meta.parameters())
    for fn in (
        lambda m: sum(p.numel() for p in m.parameters()),
        lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad),
        lambda m: sorted(backend.trainable_keys(m)),
    ):
        assert fn(meta) == fn(real)


def test_a_task_and_model_that_do_not_fit_are_one_line_errors(tmp_path, capsys):
    code = cli.main(["run", "task=easyvqa_gen", "model=fusion_tiny", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "model fusion cannot report vqa_accuracy" in err and "model=blip_vqa_tiny" in err
    code = cli.main(["run", *BLIP_TINY, "modality.text_only=[1]", f"output_dir={tmp_path / 'b'}"])
    err = capsys.readouterr().err
    assert code == 2 and "blip_vqa needs both the image and the question" in err


def test_gradient_checkpointing_keeps_the_result(tmp_path, capsys):
    """Recomputing activations in the backward pass changes memory, not the trained adapters."""
    runs = {}
    for name, extra in (("plain", []), ("ckpt", ["model.gradient_checkpointing=true"])):
        code = cli.main(
            ["run", *BLIP_TINY, *extra, "rounds=1", "num_clients=2", "partition=iid", f"output_dir={tmp_path / name}"]
        )
        assert code == 0, capsys.readouterr().err
        runs[name] = load_file(str(tmp_path / name / "global.safetensors"))
    for k, v in runs["plain"].items():
        np.testing.assert_allclose(runs["ckpt"][k], v, rtol=1e-5, atol=1e-7, err_msg=k)


def test_precision_and_device_are_checked_before_anything_runs(tmp_path, capsys):
    assert cli.main(["run", *BLIP_TINY, "precision=fp8", f"output_dir={tmp_path / 'a'}"]) == 2
    assert "precision must be one of fp32, bf16, fp16" in capsys.readouterr().err
    assert cli.main(["run", *BLIP_TINY, "grad_accum_steps=0", f"output_dir={tmp_path / 'b'}"]) == 2
    assert "grad_accum_steps=0 is out of range: it must be an integer >= 1" in capsys.readouterr().err


JANUS_TINY = [*BLIP_TINY[:1], "model=januspro_tiny", *BLIP_TINY[2:]]


def test_janus_learns_only_the_answer_tokens(tmp_path):
    s = load_settings(JANUS_TINY)
    backend = BACKENDS.get("januspro").factory(s.model, 13, False)
    from fedmm.data.tasks import load_task

    data = load_task(s.task, 0).train
    batch = backend.collate(data, np.array([0, 1]))
    bos, eos, pad, image, n_image = backend._special
    for r in range(2):
        ids, labels, mask = batch["input_ids"][r], batch["labels"][r], batch["attention_mask"][r]
        learned = (labels != -100).nonzero().flatten()
        answer = backend._answer(data.label_names[int(data.labels[r])])
        assert labels[learned].tolist() == answer == ids[learned].tolist()  # aligned with the inputs
        assert answer[-1] == eos and ids[0] == bos and int((ids == image).sum()) == n_image == 16
        assert learned.min() == len(backend._prompt(data.texts[r]))  # everything before the answer is prompt
        assert int(mask.sum()) == int(learned.max()) + 1  # right padding after the answer


def test_janus_tiny_two_federated_rounds_send_only_language_model_adapters(tmp_path, capsys):
    code = cli.main(["run", *JANUS_TINY, "rounds=2", "num_clients=2", "partition=iid", f"output_dir={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2] and all("eval_vqa_accuracy" in r for r in records)
    adapters = load_file(str(tmp_path / "global.safetensors"))
    assert adapters and all("lora_" in k and "language_model" in k for k in adapters)  # not the vision tower's
    assert {k.split(".self_attn.")[1].split(".")[0] for k in adapters} == {"q_proj", "k_proj", "v_proj"}
    adapter_bytes = sum(v.nbytes for v in adapters.values())
    assert all(2 * adapter_bytes < r["bytes_up"] < 2 * (adapter_bytes + 4096) for r in records)


def test_centralized_baseline_runs_for_the_vlm_backends(tmp_path, capsys):
    for preset in ("blip_vqa_tiny", "januspro_tiny", "hf_vlm_tiny"):
        code = cli.main(
            [
                "centralized",
                "task=easyvqa_gen",
                f"model={preset}",
                "epochs=1",
                "max_train_samples=64",
                "max_eval_samples=16",
                "batch_size=16",
                "progress=false",
                f"output_dir={tmp_path / preset}",
            ]
        )
        assert code == 0, capsys.readouterr().err
        last = json.loads((tmp_path / preset / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["epoch"] == 1 and "eval_vqa_accuracy" in last
