"""runtime=nvflare: NVFlare's simulator against the embedded runtime, and the exported job on a POC system (real
server and site processes with mutual TLS on 127.0.0.1, stopped by their ids), a failing site included."""

import pytest
from safetensors.torch import load_file

pytest.importorskip("nvflare")

from fedmm.runtime.nvflare.poc import PocSystem  # noqa: E402

from conftest import assert_stopped, fedmm, metrics, same_globals, same_site_figures, same_traffic, untrained  # noqa: E402

pytestmark = pytest.mark.slow


def _tiny(tiny_args, clients):
    return tiny_args + [f"num_clients={clients}", "threads=1", "progress=false"]


def test_simulator_matches_local(tmp_path, tiny_args):
    # SCAFFOLD (server state, each site's own c_i, control variates sent both ways with the model), and client 1
    # sending NaN: rejected by the same validation; the classifier heads stay at the sites (FedPer: they get no
    # variates), and each site scores the global and its own model (validate task)
    args = _tiny(tiny_args, 3) + ["rounds=2", "strategy=scaffold", "attack=nan", "attack.clients=[1]"]
    args += ["personalize=fedper", "client_eval=final"]
    fedmm("run", *args, f"output_dir={tmp_path / 'local'}")
    out = fedmm("run", *args, "runtime=nvflare", f"output_dir={tmp_path / 'nvflare'}")
    assert "done in" in out.stdout
    same_globals(tmp_path / "local", tmp_path / "nvflare")
    for a, b in zip(metrics(tmp_path / "local"), metrics(tmp_path / "nvflare"), strict=True):
        same_traffic(a, b)
        assert a["rejected"] == b["rejected"] and list(a["rejected"]) == ["1"] and "non-finite" in a["rejected"]["1"]
    same_site_figures(metrics(tmp_path / "local")[-1], metrics(tmp_path / "nvflare")[-1])
    for name in ("config.yaml", "report.md", "checkpoints/round_0002/global.safetensors"):
        assert (tmp_path / "nvflare" / name).exists(), name
    # every site that trained keeps its own c_i, the one whose NaN reply the server refused too (as in the paper, a
    # client updates its variate whether or not the server uses its reply)
    assert len(list((tmp_path / "nvflare" / "client_state").glob("client_*/scaffold-r2.safetensors"))) == 3


def test_simulator_runs_janus_pro_in_the_one_environment(tmp_path):
    """The seed needed a separate environment for Janus; here it is one more backend, and only its adapters move."""
    run = tmp_path / "janus"
    fedmm(
        "run",
        "runtime=nvflare",
        "model=januspro_tiny",
        "task=easyvqa_gen",
        "num_clients=2",
        "rounds=1",
        "max_train_samples=100",
        "max_eval_samples=20",
        "threads=1",
        "progress=false",
        "modality.text_only=[]",
        "modality.image_only=[]",
        "lr=0.1",
        f"output_dir={run}",
    )
    # One round of adapters lowers the eval loss of the random tiny model (measured 5.23 -> 4.98).
    janus = ["model=januspro_tiny", "task=easyvqa_gen", "max_eval_samples=20", "modality.text_only=[]"]
    assert metrics(run)[-1]["eval_loss"] < untrained([*janus, "modality.image_only=[]"], tmp_path)["loss"] - 0.15
    params = load_file(run / "global.safetensors")
    assert params and all(".lora_" in k and "language_model" in k for k in params)
    adapter_bytes = sum(t.numel() * t.element_size() for t in params.values())
    assert all(adapter_bytes <= r["bytes_up"] / r["num_clients"] < adapter_bytes + 4096 for r in metrics(run))


def test_export_rejects_bad_sites(tmp_path, tiny_args):
    out = fedmm(
        "export",
        "nvflare",
        str(tmp_path / "job"),
        *_tiny(tiny_args, 2),
        f"output_dir={tmp_path / 'run'}",
        "--site",
        "a",
        check=False,
    )
    assert out.returncode == 2 and "error: 1 sites for 2 clients; give one --site per client" in out.stderr
    out = fedmm(
        "export",
        "nvflare",
        str(tmp_path / "job"),
        *_tiny(tiny_args, 1),
        f"output_dir={tmp_path / 'run'}",
        "--site",
        "a=/data",
        check=False,
    )
    assert out.returncode == 2 and "reads no data folder" in out.stderr
    assert not (tmp_path / "job").exists()


def test_exported_job_on_a_poc_system(tmp_path, tiny_args):
    args = _tiny(tiny_args, 2) + ["rounds=2"]
    fedmm("run", *args, f"output_dir={tmp_path / 'local'}")
    run, failing = tmp_path / "poc-run", tmp_path / "poc-failing"
    fedmm(
        "export",
        "nvflare",
        str(tmp_path / "job"),
        *args,
        f"output_dir={run}",
        "--site",
        "hospital-a",
        "--site",
        "hospital-b",
    )
    fedmm(
        "export",
        "nvflare",
        str(tmp_path / "bad-job"),
        *args,
        "min_clients=2",
        f"output_dir={failing}",
        "--site",
        "hospital-a",
        "--site",
        "hospital-b",
    )
    bad_site = tmp_path / "bad-job" / "app_hospital-b" / "config" / "config_fed_client.json"
    bad_site.write_text(bad_site.read_text().replace("--partition-id=1", "--partition-id=7"))  # a misconfigured site

    poc = PocSystem(tmp_path / "poc", ["hospital-a", "hospital-b"])
    try:
        poc.start()
        pids = [int(p.read_text()) for p in poc.workspace.rglob("pid.fl")]
        assert len(pids) == 3  # the server and the two sites
        assert poc.wait(poc.submit(tmp_path / "job"), timeout=300) == "COMPLETED"
        assert [r["round"] for r in metrics(run)] == [1, 2]
        assert all(r["clients"] == [0, 1] and "failures" not in r for r in metrics(run))
        same_globals(tmp_path / "local", run)  # the embedded runtime's result, from real NVFlare processes
        same_site_figures(metrics(tmp_path / "local")[-1], metrics(run)[-1])  # each site's validate task
        assert (run / "report.md").exists() and (run / "checkpoints" / "round_0002" / "global.safetensors").exists()

        state = poc.wait(poc.submit(tmp_path / "bad-job"), timeout=300)  # ends, named and explained; no hang
        assert state != "COMPLETED"
        error = (failing / "error.txt").read_text()
        assert (
            "round 1: only 1 of 2 clients replied with a valid update (client 1: SiteRefusal: site refused "
            "(partition_id): partition-id 7 is out of range" in error
        ), error
    finally:
        poc.stop()
    assert_stopped(pids, poc)
