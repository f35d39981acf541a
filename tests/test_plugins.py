"""A package outside the repository adds a task and a backend; the shell runs them with `plugins=` and, once the
package is installed, through its `fedmm.plugins` entry point."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import HANG

PLUGIN = """
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedmm.backends.base import Backend
from fedmm.data.synthetic import SyntheticConfig, load_synthetic
from fedmm.registry import BACKENDS, TASKS


@dataclass
class ColoursConfig(SyntheticConfig):
    name: str = "colours"
    num_train: int = 200


@TASKS.register("colours", ColoursConfig)
def load_colours(cfg, seed, centralized=False):
    return load_synthetic(cfg, seed, centralized)


@dataclass
class MeanColourConfig:
    name: str = "mean_colour"
    hidden: int = 4


@BACKENDS.register("mean_colour", MeanColourConfig)
class MeanColour(Backend):
    def build_model(self, seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(3, self.cfg.hidden), nn.ReLU(), nn.Linear(self.cfg.hidden, self.num_labels))

    def logits(self, model, batch):
        return model(batch["colour"])

    def collate(self, data, idx):
        colour = data.images[data.image_ids[idx]].reshape(len(idx), -1, 3).mean(1) / 255.0
        return {"colour": torch.tensor(colour, dtype=torch.float32), "labels": torch.from_numpy(data.labels[idx])}
"""
RUN = ["task=colours", "model=mean_colour", "model.hidden=3", "rounds=2", "num_clients=2", "progress=false"]


def _fedmm(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "fedmm.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=HANG
    )


@pytest.mark.slow
def test_a_package_outside_the_repository_runs_from_the_shell(tmp_path):
    src = tmp_path / "src"
    (src / "fedmm_colours").mkdir(parents=True)
    (src / "fedmm_colours" / "__init__.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = _fedmm(["run", "task=colours", "model=mean_colour"], env, tmp_path)  # not imported: not known
    assert out.returncode == 2 and "unknown model 'mean_colour'" in out.stderr
    out = _fedmm(["run", "plugins=[fedmm_colours]", *RUN, f"output_dir={tmp_path / 'a'}"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "model mean_colour: trainable 60 / 60" in out.stdout  # 3*3+3 + 3*12+12 (synthetic: 12 labels)
    assert "plugins:\n- fedmm_colours" in (tmp_path / "a" / "config.yaml").read_text()  # a resume imports it too
    out = _fedmm(["run", f"resume={tmp_path / 'a'}", "rounds=3"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert [json.loads(l)["round"] for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    out = _fedmm(["run", "plugins=[no_such_plugin]", *RUN], env, tmp_path)
    assert out.returncode == 2 and "plugin module 'no_such_plugin' cannot be imported" in out.stderr

    # installed as a package that declares the entry point: no plugins= needed
    (src / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "fedmm-colours"
        version = "0.1"
        [project.entry-points."fedmm.plugins"]
        colours = "fedmm_colours"
        [tool.setuptools]
        packages = ["fedmm_colours"]
    """)
    )
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert pip.returncode == 0, pip.stderr
    out = _fedmm(["run", *RUN, f"output_dir={tmp_path / 'b'}"], {**os.environ, "PYTHONPATH": str(site)}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "b" / "global.safetensors").exists()
