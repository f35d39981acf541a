"""privacy.secure_aggregation=true on runtime=flower: Flower's SecAgg+ in its simulation engine and in a real
SuperLink/SuperNode deployment (127.0.0.1, every process stopped by its id), a SuperNode killed mid-run."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("flwr")

from fedmm.runtime.flower.localnet import LocalDeployment  # noqa: E402

from conftest import HANG, assert_stopped, fedmm, metrics  # noqa: E402

pytestmark = pytest.mark.slow
SECURE = ["privacy.secure_aggregation=true", "runtime=flower"]


def _globals(path):
    from safetensors.numpy import load_file

    return load_file(str(path / "global.safetensors"))


def _bound(run, clip=8.0, levels=2**22):
    """The documented per-round bound (fedmm.runtime.flower.secagg): 2c/Q + c * max_weight / (min_weight * Q)."""
    import json

    sizes = [c["num_examples"] for c in json.loads((run / "partition.json").read_text())]
    return 2 * clip / levels + clip * max(sizes) / (min(sizes) * levels)


def test_secure_sum_matches_plain_fedavg_within_the_quantization_bound(tmp_path, tiny_args):
    # client_eval=none: secure aggregation turns client-side evaluation off (and holds nothing out), so the plain run
    # must train on the same data
    args = tiny_args + ["num_clients=3", "rounds=1", "threads=1", "progress=false", "client_eval=none"]
    fedmm("run", *args, f"output_dir={tmp_path / 'plain'}")
    fedmm("run", *args, *SECURE, "runtime.cpus=2", f"output_dir={tmp_path / 'secure'}")
    plain, secure = _globals(tmp_path / "plain"), _globals(tmp_path / "secure")
    worst = max(float(np.abs(secure[k].astype(np.float64) - plain[k]).max()) for k in plain)
    bound = _bound(tmp_path / "plain")
    assert 0 < worst <= bound + 1e-6, (worst, bound)  # + float32 rounding of values near 1
    a, b = metrics(tmp_path / "plain")[0], metrics(tmp_path / "secure")[0]
    assert b["clients"] == [0, 1, 2] and b["num_examples"] == a["num_examples"]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9)  # plaintext metrics: the same training
    assert b["bytes_up"] > a["bytes_up"]  # masked vectors are int64 and there are key exchanges too


def test_distributed_dp_under_secure_aggregation(tmp_path, tiny_args):
    """privacy=dp mode=local with SecAgg+: the clients clip and noise, the server only unmasks the sum; with tiny
    noise the model is the unweighted fixed-denominator mean, as central DP computes it without SecAgg."""
    dp = [
        "privacy=dp",
        "privacy.mode=local",
        "privacy.noise_multiplier=1e-9",
        "privacy.clip_norm=1e3",
        "privacy.noise_seed=3",
    ]
    args = tiny_args + ["num_clients=3", "rounds=1", "threads=1", "progress=false"]
    fedmm("run", *args, *dp, *SECURE, "runtime.cpus=2", f"output_dir={tmp_path / 'secure'}")
    fedmm("run", *args, *dp, f"output_dir={tmp_path / 'local'}")
    secure, local = _globals(tmp_path / "secure"), _globals(tmp_path / "local")
    worst = max(float(np.abs(secure[k].astype(np.float64) - local[k]).max()) for k in local)
    assert worst <= 2 * 8.0 / 2**22 * 1.5, worst  # weights are exactly 1: only value quantization remains
    assert metrics(tmp_path / "secure")[0]["dp_epsilon"] == metrics(tmp_path / "local")[0]["dp_epsilon"]


def test_deployment_survives_a_supernode_killed_during_the_protocol(tmp_path, tiny_args):
    """Three SuperNodes, threshold 2. SuperNode 2 is killed in round 2 once it has received the protocol's third
    message (after the key exchange, while its client trains for its masked vector): Flower's SecAgg+ rebuilds its
    masks from the others' shares and the round completes with clients 0 and 1; so does round 3, without it."""
    run = tmp_path / "run"
    result = {}
    args = tiny_args + [
        "num_clients=3",
        "rounds=3",
        "min_clients=2",
        "runtime.warm=false",
        "progress=false",
        *SECURE,
        f"output_dir={run}",
    ]
    with LocalDeployment(tmp_path / "net", num_supernodes=3) as net:
        pids = [net.superlink.pid] + [p.pid for p in net.supernodes.values()]
        job = threading.Thread(target=lambda: result.update(out=net.run(args)))
        job.start()
        log = tmp_path / "net" / "supernode-2.log"
        deadline = time.monotonic() + HANG
        # a query, then four protocol messages per round: round 2's third is the 1 + 4 + 3 = 8th
        while not log.exists() or log.read_text().count("Receiving: ") < 8:
            assert time.monotonic() < deadline and job.is_alive(), "round 2 never reached its masked vectors"
            time.sleep(0.05)
        net.kill_supernode(2)
        job.join(timeout=HANG)
        assert not job.is_alive()
    assert_stopped(pids, net)
    records = metrics(run)
    assert [r["round"] for r in records] == [1, 2, 3], (records, result["out"].stdout[-4000:])
    assert records[0]["clients"] == [0, 1, 2]
    for r in records[1:]:
        assert r["clients"] == [0, 1] and "2" in r["failures"], r
    assert "fedmm: run finished" in result["out"].stdout
