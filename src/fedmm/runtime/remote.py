"""A client that runs apart from the server (a Flower SuperNode, an NVFlare site): it receives the run's config.yaml
with every round, builds its share of the experiment from it once, and keeps that across rounds.

Its site settings (a Flower node config, an NVFlare site's script arguments) are:
- `partition-id`: which client of the experiment it is (required);
- `data-root`: where this site's data is, replacing the config's `task.root` (MM-IMDb: the folder `fedmm prepare`
  wrote, of which a site needs only its own `client_<i>/`); a task that fedmm partitions (easy-VQA, synthetic) gives
  each site its share of the configured split;
- `state-dir`: where its clients' state (error-feedback residuals) lives, default `~/.fedmm/<runtime>-state`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedmm.experiment.server import Federation

_SITE: dict[str, Any] = {}  # the one client this process serves: {"key": ..., "site": Site, "trainer": ClientTrainer}


def partition_id(site_config: dict[str, Any]) -> int:
    if "partition-id" not in site_config:
        raise ValueError("this site has no partition-id; give it one in its site settings (Flower: --node-config "
                         "'partition-id=<i>')")
    return int(site_config["partition-id"])


def state_dir(site_config: dict[str, Any], request: dict[str, Any]) -> Path:
    """The run directory's `client_state/` when the client runs beside the server (simulation), else
    `<state-dir>/<run>/` on the site's machine."""
    if request["simulation"] and "state-dir" not in site_config:
        return Path(request["state_dir"])
    default = Path.home() / ".fedmm" / f"{request.get('runtime', 'remote')}-state"
    return Path(str(site_config.get("state-dir", default))).expanduser() / request["run"]


def fit(site_config: dict[str, Any], payload: bytes, request: dict[str, Any]) -> bytes:
    """One round of local training for this site's client (`request["config"]` is its `FitInstructions` as JSON);
    the model and data of the last call are reused while the experiment is the same."""
    from fedmm.client.client import ClientTrainer
    from fedmm.config.load import settings_from_yaml
    from fedmm.experiment.site import build_site

    cid = partition_id(site_config)
    key = (request["settings"], cid, str(site_config.get("data-root", "")), str(state_dir(site_config, request)))
    if _SITE.get("key") != key:
        _SITE.clear()
        text = request["settings"]
        if site_config.get("data-root"):  # this site's data lives here, not where the server's config says
            from omegaconf import OmegaConf

            cfg = OmegaConf.create(text)
            cfg.task.root = str(site_config["data-root"])
            text = OmegaConf.to_yaml(cfg)
        site = build_site(settings_from_yaml(text), cid)
        _SITE.update(key=key, site=site, trainer=ClientTrainer(site.backend, site.model, progress=False,
                                                               state_dir=state_dir(site_config, request)))
    site = _SITE["site"]
    return _SITE["trainer"].fit_bytes(cid, site.train, payload, request["config"], site.val)


def request_for_clients(fed: "Federation", runtime: str, simulation: bool, **extra: Any) -> dict[str, Any]:
    """What every round's message to a remote client carries besides the parameters and its instructions: the
    run's config.yaml (from which the site builds its share of the experiment) and where client state lives."""
    run_dir = fed.rundir.path
    return {"settings": fed.settings.to_yaml(), "run": run_dir.name,
            "state_dir": str(run_dir.resolve() / "client_state"), "runtime": runtime, "simulation": simulation,
            **extra}
