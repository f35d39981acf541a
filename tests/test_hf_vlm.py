"""The `hf_vlm` backend: a tiny random LLaVA through federated rounds on generative easy-VQA (built in code, and loaded
from a checkpoint folder through transformers' Auto classes as a user's real checkpoint would be), prompt/answer
alignment, and LoRA target resolution for each family's language model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file
from torch import nn

from conftest import fedmm, untrained
from fedmm import cli
from fedmm.backends import BACKENDS
from fedmm.backends.hf_vlm import HFVLMBackend, HFVLMConfig
from fedmm.config import load_settings
from fedmm.data.tasks import load_task
from fedmm.errors import FedmmError

RUN = [
    "task=easyvqa_gen",
    "modality.text_only=[]",
    "modality.image_only=[]",
    "max_train_samples=120",
    "max_eval_samples=24",
    "batch_size=16",
    "lr=0.003",
    "progress=false",
    "rounds=2",
    "num_clients=3",
    "partition=iid",
]


def tiny_backend(*overrides: str) -> HFVLMBackend:
    s = load_settings(["task=easyvqa_gen", "model=hf_vlm_tiny", *overrides])
    return BACKENDS.get("hf_vlm").factory(s.model, 13, False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny LLaVA saved the way Hugging Face checkpoints are: weights, config, processor, chat template."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    backend = tiny_backend()
    torch.manual_seed(0)
    backend.model_class()(backend.model_config()).save_pretrained(folder)
    backend.processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def paligemma_checkpoint(tmp_path_factory):
    """A tiny PaliGemma (Gemma + SigLIP, no chat template) with its own processor over fedmm's vocabulary."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    from fedmm.backends.loading import tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-paligemma")
    tok = tiny_tokenizer()
    tok.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]"})
    tok.model_input_names = ["input_ids", "attention_mask"]
    images = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    images.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=images, tokenizer=tok)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    text = {
        "model_type": "gemma",
        "vocab_size": len(tok),
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        **small,
    }
    vision = {"model_type": "siglip_vision_model", "num_hidden_layers": 1, "image_size": 32, "patch_size": 8, **small}
    config = PaliGemmaConfig(
        text_config=text, vision_config=vision, image_token_id=processor.image_token_id, projection_dim=32
    )
    torch.manual_seed(0)
    PaliGemmaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run(tmp_path, capsys, *model_args: str) -> list[dict]:
    code = cli.main(["run", *RUN, *model_args, f"output_dir={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_tiny_llava_two_federated_rounds_send_only_the_language_adapters(tmp_path, capsys):
    records = run(tmp_path, capsys, "model=hf_vlm_tiny", "lr=0.05")
    assert [r["round"] for r in records] == [1, 2]
    # Too small to answer in two rounds, but it learns: the eval loss falls (measured 5.35 -> 5.04).
    assert records[-1]["eval_loss"] < untrained([*RUN, "model=hf_vlm_tiny"], tmp_path)["loss"] - 0.15
    adapters = load_file(str(tmp_path / "global.safetensors"))
    assert adapters and all(k.startswith("model.language_model.") and "lora_" in k for k in adapters)
    adapter_bytes = sum(v.nbytes for v in adapters.values())
    assert adapter_bytes == 4096  # r=4 on q and v of 2 layers: 8 tensors x 4 x 32 float32
    for r in records:  # 3 clients each way; the rest is each message's header
        for direction in ("bytes_up", "bytes_down"):
            assert 3 * adapter_bytes < r[direction] < 3 * (adapter_bytes + 2048)


def test_a_checkpoint_folder_loads_through_the_auto_classes_and_its_chat_template(tmp_path, capsys, checkpoint):
    backend = HFVLMBackend(HFVLMConfig(pretrained=str(checkpoint), lora_r=4), 13, False)
    assert backend.family == "llava"  # from the checkpoint's config.json
    assert backend._templates == (("[CLS]question: <image>", " answer:"), (" ", "[SEP]"))
    records = run(
        tmp_path, capsys, "model=hf_vlm", f"model.pretrained={checkpoint}", "model.family=''", "model.lora_r=4"
    )
    assert [r["round"] for r in records] == [1, 2]
    assert sum(v.nbytes for v in load_file(str(tmp_path / "global.safetensors")).values()) == 4096


def test_paligemma_takes_a_prompt_template_and_marks_the_answer_with_token_type_1(
    tmp_path, capsys, paligemma_checkpoint
):
    backend = HFVLMBackend(
        HFVLMConfig(pretrained=str(paligemma_checkpoint), prompt_template="answer en {question}"), 13, False
    )
    data = load_task(load_settings(["task=easyvqa_gen", "max_train_samples=8"]).task, seed=0).train
    batch = backend.collate(data, np.arange(3))
    answer = batch["labels"] != -100
    assert backend.family == "paligemma" and answer.any()
    assert torch.equal(batch["token_type_ids"].bool(), answer)  # prefix 0 (bidirectional), answer 1 (causal)
    assert not backend.generation_prompts(batch)["token_type_ids"].any()
    records = run(
        tmp_path,
        capsys,
        "model=hf_vlm",
        f"model.pretrained={paligemma_checkpoint}",
        "model.family=''",
        "model.prompt_template='answer en {question}'",
        "model.lora_r=4",
    )
    adapters = load_file(str(tmp_path / "global.safetensors"))
    assert [r["round"] for r in records] == [1, 2]
    assert adapters and all(k.startswith("model.language_model.") for k in adapters)


def test_labels_cover_exactly_the_answer_and_generation_starts_from_the_training_prompt():
    backend = tiny_backend("max_train_samples=8")
    data = load_task(load_settings(["task=easyvqa_gen", "max_train_samples=8"]).task, seed=0).train
    idx = np.arange(5)
    batch = backend.collate(data, idx)
    prompts = backend.generation_prompts(batch)
    tok = backend.tokenizer
    for r, i in enumerate(idx):
        answer = data.label_names[int(data.labels[i])]
        image = Image.fromarray(data.images[data.image_ids[i]])
        alone = backend.processor(
            text=[backend._question(data.texts[i])], images=[image], add_special_tokens=False, return_tensors="pt"
        )["input_ids"][0]
        n = len(alone)
        real = batch["attention_mask"][r].bool()
        assert torch.equal(batch["input_ids"][r, :n], alone) and (batch["labels"][r, :n] == -100).all()
        target = batch["labels"][r][real][n:].tolist()
        assert target == tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        assert torch.equal(batch["input_ids"][r][real][n:], torch.tensor(target))
        assert (batch["labels"][r][~real] == -100).all()
        left = prompts["attention_mask"][r].bool()  # the same prompt, left-padded for generation
        assert torch.equal(prompts["input_ids"][r][left], alone) and not left[:-n].any()


@pytest.mark.parametrize(
    "family,language_model",
    [
        ("llava", "model.language_model"),
        ("llava_next", "model.language_model"),
        ("qwen2_vl", "model.language_model"),
        ("paligemma", "model.language_model"),
        ("gemma3", "model.language_model"),
        ("idefics3", "model.text_model"),
        ("smolvlm", "model.text_model"),
    ],
)
def test_lora_goes_on_each_familys_language_model_only(family, language_model):
    cfg = HFVLMConfig(
        pretrained="not/on-disk",
        family=family,
        text_config={"num_hidden_layers": 2},
        vision_config={"num_hidden_layers": 1},
    )
    backend = HFVLMBackend(cfg, 13, False)
    model = backend.meta_model()  # the family's default shapes: the checkpoint is not on disk
    keys = backend.trainable_keys(model)
    assert backend.language_model_prefix(model) == language_model
    assert len(keys) == 8  # A and B on q and v of 2 layers
    assert all(k.startswith(language_model + ".") and ("q_proj.lora_" in k or "v_proj.lora_" in k) for k in keys)
    assert all(backend.key_modality(k) == "shared" for k in keys)
    assert backend.key_modality("model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.default.weight") == "image"


def test_a_family_not_listed_is_found_through_get_decoder():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.decoder = nn.Linear(2, 2)

        def get_decoder(self):
            return self.model.decoder

    backend = HFVLMBackend(HFVLMConfig(pretrained="x", family="some_new_vlm"), 13, False)
    assert backend.language_model_prefix(Wrapper()) == "model.decoder"
    assert backend.lora_targets(Wrapper()) == r"model\.decoder\..*\.(q_proj|v_proj)"


def test_checkpoints_without_a_chat_template_need_a_prompt_template(tmp_path, checkpoint):
    import shutil

    folder = tmp_path / "no-template"
    shutil.copytree(checkpoint, folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(FedmmError, match="no chat template; give model.prompt_template"):
        _ = HFVLMBackend(HFVLMConfig(pretrained=str(folder)), 13, False)._templates
    backend = HFVLMBackend(HFVLMConfig(pretrained=str(folder), prompt_template="{image} {question} answer:"), 13, False)
    assert backend._templates == (("<image> ", " answer:"), ("", "[SEP]"))
    with pytest.raises(FedmmError, match=r"model.prompt_template needs \{question\}"):
        HFVLMBackend(HFVLMConfig(pretrained=str(folder), prompt_template="{image}"), 13, False)
    with pytest.raises(FedmmError, match="cannot be random-initialised"):
        HFVLMBackend(HFVLMConfig(pretrained="", family="qwen2_vl"), 13, False)


def test_fedmm_info_sizes_llava_from_the_family_shapes_without_any_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = fedmm("info", "model=hf_vlm").stdout
    assert "trainable:  8,388,608 (" in out  # r=16 on q and v of LLaVA 1.5 7B's 32 layers: 32 x 2 x 2 x 16 x 4096
    assert "llava's default config shapes" in out
