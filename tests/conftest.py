import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY = ["task=synthetic", "model=fusion_tiny", "modality.text_only=[]", "modality.image_only=[]",
        "task.num_train=600", "task.num_test=200", "task.num_val=100", "batch_size=32", "lr_schedule=constant"]


def fedmm(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `fedmm` command line in a subprocess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "fedmm.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fedmm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def tiny_args():
    return list(TINY)
