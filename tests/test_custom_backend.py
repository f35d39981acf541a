"""A backend a user writes and registers (README, "Adding a backend") runs like a built-in one."""

import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedmm import cli
from fedmm.backends import BACKENDS, Backend


@dataclass
class MeanPixelConfig:
    name: str = "mean_pixel"
    hidden: int = 8


class MeanPixelNet(nn.Module):
    """A deliberately small model: the mean colour of the image and the question's length -> labels."""

    def __init__(self, hidden: int, num_labels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, num_labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


@BACKENDS.register("mean_pixel", MeanPixelConfig)
class MeanPixelBackend(Backend):
    def build_model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return MeanPixelNet(self.cfg.hidden, self.num_labels)

    def collate(self, data, idx):
        colour = data.images[data.image_ids[idx]].reshape(len(idx), -1, 3).mean(1) / 255.0
        length = np.array([[len(data.texts[i]) / 50.0] for i in idx])
        features = torch.tensor(np.concatenate([colour, length], axis=1), dtype=torch.float32)
        return {"features": features, "labels": torch.from_numpy(data.labels[idx])}


def test_a_registered_backend_runs_federated_rounds_from_the_cli(tmp_path, capsys):
    code = cli.main(
        [
            "run",
            "task=synthetic",
            "model=mean_pixel",
            "model.hidden=4",
            "rounds=2",
            "num_clients=2",
            "modality.text_only=[]",
            "modality.image_only=[]",
            "task.num_train=200",
            "progress=false",
            f"output_dir={tmp_path}",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "model mean_pixel: trainable 80 / 80" in out.out  # 4*4+4 + 4*12+12 for synthetic's 12 labels
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "eval_accuracy" in records[-1]
    code = cli.main(["run", "task=synthetic", "model=mean_pixel", "model.depth=3", f"output_dir={tmp_path / 'x'}"])
    assert code == 2 and "unknown option 'model.depth'" in capsys.readouterr().err  # its options are validated
