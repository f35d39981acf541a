import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Fuzz tests (hypothesis) explore new inputs on every local run; in CI they replay a fixed set, so that a landing
# decision never depends on the draw.
from hypothesis import settings as _hypothesis  # noqa: E402

_hypothesis.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    _hypothesis.load_profile("ci")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory):
    """The suite's runs keep cached features in a folder of their own, never in the user's ~/.cache/fedmm."""
    os.environ["FEDMM_CACHE"] = str(tmp_path_factory.mktemp("fedmm-cache"))


TINY = [
    "task=synthetic",
    "model=fusion_tiny",
    "modality.text_only=[]",
    "modality.image_only=[]",
    "task.num_train=600",
    "task.num_test=200",
    "task.num_val=100",
    "batch_size=32",
    "lr_schedule=constant",
]


# Seconds after which a subprocess or a wait counts as hung: far past what the slowest run here needs on a loaded
# 2-core machine, so that a test's verdict never depends on the machine's load (a hang still ends).
HANG = 3600


def fedmm(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = HANG) -> subprocess.CompletedProcess:
    """Run the real `fedmm` command line in a subprocess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fedmm.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fedmm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def initial_server(args: list[str], tmp_path: Path):
    """The server side of a run as `fedmm run` builds it from `args` (its seed, data and initial global model in
    `.params`), quietly, in `tmp_path / "untrained"`."""
    import contextlib
    import io

    from fedmm.config import load_settings
    from fedmm.experiment import build_server

    with contextlib.redirect_stdout(io.StringIO()):
        return build_server(load_settings([*args, f"output_dir={tmp_path / 'untrained'}"]))


def untrained(args: list[str], tmp_path: Path) -> dict[str, float]:
    """The test-split figures of a run's initial global model (what its round 0 would score): the baseline an
    end-to-end run must beat by a stated margin to show that it learned."""
    from fedmm.config import load_settings
    from fedmm.experiment.server import server_metrics

    exp = initial_server(args, tmp_path)
    return server_metrics(exp.model, exp.backend, exp.data, exp.data.test, load_settings(args).eval_batch_size)


@pytest.fixture
def flower_messages(monkeypatch):
    """Flower's own Message objects outside a running app (they need a task identity)."""
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("run_id", "node_id", "task_id"):
        monkeypatch.setattr(TaskIdentity, f"_{name}", 1, raising=False)


@pytest.fixture
def tiny_args():
    return list(TINY)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_site_figures(a: dict, b: dict, atol: float = 1e-6) -> None:
    """Two records' client_eval (per site: its example count and figures) agree, to atol."""
    assert a["client_eval"].keys() == b["client_eval"].keys() and a["client_eval"]
    for site, figures in a["client_eval"].items():
        assert figures.keys() == b["client_eval"][site].keys()
        assert all(abs(v - b["client_eval"][site][k]) <= atol for k, v in figures.items()), site


def same_globals(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Two runs ended with the same global model (to atol)."""
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a / "global.safetensors"), load_file(b / "global.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=atol, msg=k)


def same_traffic(a: dict, b: dict) -> None:
    """Two round records moved the same bytes: the model down exactly, the replies up to their timing's text.

    A reply's safetensors header carries the client's `seconds` (to 0.1 ms, so its text differs by at most 4
    characters between runs), and safetensors pads the header to 8 bytes: each reply may differ by one pad.
    """
    assert a["clients"] == b["clients"] and a["bytes_down"] == b["bytes_down"]
    replies = len(a["clients"]) + len(a.get("rejected", {}))
    assert abs(a["bytes_up"] - b["bytes_up"]) <= 8 * replies, (a["bytes_up"], b["bytes_up"])


def assert_stopped(pids: list[int], system) -> None:
    """Every process a local test system started is gone, the ones it detached included."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert system.leftovers() == []
