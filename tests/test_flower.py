"""runtime=flower: Flower's simulation engine, and a real SuperLink/SuperNode deployment on 127.0.0.1 with TLS and
SuperNode authentication (every process stopped by its id, nothing left running)."""

import stat
import threading
import time
import tomllib

import pytest

from fedmm.errors import FedmmError

pytest.importorskip("flwr")

from fedmm.runtime.flower.deploy import write_app, write_certificates  # noqa: E402
from fedmm.runtime.flower.localnet import LocalDeployment  # noqa: E402

from conftest import HANG, assert_stopped, fedmm, metrics, same_globals, same_site_figures, same_traffic  # noqa: E402

pytestmark = pytest.mark.slow


def _tiny(tiny_args, clients):
    # one torch thread: Ray gives each simulated client one core, and float sums depend on the thread count
    return tiny_args + [f"num_clients={clients}", "threads=1", "progress=false"]


def test_simulation_matches_local(tmp_path, tiny_args):
    # client 1 is Byzantine (sends NaN): both runtimes reject it through the same validation and agree on the rest;
    # FedDyn keeps state on both sides (each site's linear term, the server's h); each site also trains a Ditto
    # personal model and, after the last round, scores both on its own test data
    args = _tiny(tiny_args, 3) + ["rounds=2", "compression.kind=int8_block", "attack=nan", "attack.clients=[1]"]
    args += ["strategy=feddyn"]
    args += ["personalize=ditto", "client_eval=final"]
    fedmm("run", *args, f"output_dir={tmp_path / 'local'}")
    out = fedmm("run", *args, "runtime=flower", "runtime.cpus=2", f"output_dir={tmp_path / 'flower'}")
    assert "done in" in out.stdout
    same_globals(tmp_path / "local", tmp_path / "flower")
    local, flower = metrics(tmp_path / "local"), metrics(tmp_path / "flower")
    for a, b in zip(local, flower):
        same_traffic(a, b)
        assert a["eval_accuracy"] == b["eval_accuracy"]
        assert a["rejected"] == b["rejected"] == {"1": "non-finite values in " + a["rejected"]["1"].split(" in ")[1]}
        assert a["clients"] == [0, 2]
    same_site_figures(local[-1], flower[-1])
    assert "personal_accuracy" in local[-1]["client_eval"]["2"]
    for name in ("config.yaml", "report.md", "partition.json", "checkpoints/round_0002/global.safetensors"):
        assert (tmp_path / "flower" / name).exists(), name
    assert list((tmp_path / "flower" / "client_state").glob("client_*/residual-r2.safetensors"))
    assert len(list((tmp_path / "flower" / "client_state").glob("client_*/personal-r2.safetensors"))) == 3
    assert len(list((tmp_path / "flower" / "client_state").glob("client_*/feddyn-r2.safetensors"))) == 3


def test_deployment_with_tls_supernode_auth_and_resume(tmp_path, tiny_args):
    args = _tiny(tiny_args, 2)
    fedmm("run", *args, "rounds=3", f"output_dir={tmp_path / 'local'}")
    run = tmp_path / "flower-run"
    net = LocalDeployment(tmp_path / "net", num_supernodes=2)
    try:
        net.start()
        pids = [net.superlink.pid] + [p.pid for p in net.supernodes.values()]
        out = net.run(args + ["rounds=2", f"output_dir={run}"])
        assert "fedmm: run finished" in out.stdout, out.stdout[-3000:]
        assert [r["round"] for r in metrics(run)] == [1, 2]
        assert all(r["clients"] == [0, 1] and "failures" not in r for r in metrics(run))
        assert (run / "global.safetensors").exists() and (run / "report.md").exists()
        out = net.run([f"resume={run}", "rounds=3"])  # a new Flower run continues the fedmm run
        assert "resuming" in out.stdout and [r["round"] for r in metrics(run)] == [1, 2, 3]
        same_globals(tmp_path / "local", run)  # the same result as the embedded runtime, over the network
        same_site_figures(metrics(tmp_path / "local")[-1], metrics(run)[-1])  # evaluate messages, via warm workers
        assert len(list((tmp_path / "net" / "workers").glob("*.sock"))) == 2  # warm workers served the rounds
    finally:
        net.stop()
    assert_stopped(pids, net)


def test_run_goes_on_when_a_supernode_dies(tmp_path, tiny_args):
    run = tmp_path / "run"
    result = {}
    with LocalDeployment(tmp_path / "net", num_supernodes=3) as net:
        job = threading.Thread(
            target=lambda: result.update(
                out=net.run(
                    # client_eval=none: without warm workers every message starts a ClientApp process; the
                    # evaluate messages are tested with warm workers above
                    _tiny(tiny_args, 3)
                    + ["rounds=3", "min_clients=2", "runtime.warm=false", "client_eval=none", f"output_dir={run}"]
                )
            )
        )
        job.start()
        deadline = time.monotonic() + HANG
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
            assert time.monotonic() < deadline and job.is_alive(), "round 1 never finished"
            time.sleep(0.2)
        net.kill_supernode(2)
        job.join(timeout=HANG)
        assert not job.is_alive()
    records = metrics(run)
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[0]["clients"] == [0, 1, 2]
    for r in records[1:]:
        assert r["clients"] == [0, 1] and "Node Unavailable" in r["failures"]["2"]
    assert "fedmm: run finished" in result["out"].stdout


def test_certificates(tmp_path):
    from cryptography import x509

    files = write_certificates(tmp_path / "pki", ["127.0.0.1", "superlink.example"], supernodes=2)
    assert len(files) == 8
    ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["superlink.example"]
    for key in ("ca.key", "server.key", "supernode-0.key", "supernode-1.key"):
        assert stat.S_IMODE((tmp_path / "pki" / key).stat().st_mode) == 0o600
    assert (tmp_path / "pki" / "supernode-1.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(FedmmError, match="already holds"):
        write_certificates(tmp_path / "pki", ["127.0.0.1"], 1)
    with pytest.raises(FedmmError, match="--host"):
        write_certificates(tmp_path / "other", [], 1)


def test_app_folder(tmp_path, tiny_args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_app(tmp_path / "app", tiny_args + ["output_dir=runs/x", "runtime=local"])
    toml = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    assert toml["tool"]["flwr"]["app"]["components"]["serverapp"] == "fedmm.runtime.flower.app:server_app"
    overrides = toml["tool"]["flwr"]["app"]["config"]["overrides"]
    assert f"output_dir={tmp_path / 'runs' / 'x'}" in overrides and overrides.endswith("runtime=flower")
    assert "runtime=local" not in overrides
    with pytest.raises(FedmmError, match="exists"):
        write_app(tmp_path / "app", tiny_args)
    with pytest.raises(FedmmError):
        write_app(tmp_path / "bad", tiny_args + ["rounds=zero"])
    assert not (tmp_path / "bad").exists()  # checked before anything is written
