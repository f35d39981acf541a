"""A client that runs apart from the server (a Flower SuperNode, an NVFlare site): it receives the run's config.yaml
with every round, builds its share of the experiment from it once, and keeps that across rounds.

Its site settings (a Flower node config, an NVFlare site's script arguments) are:
- `partition-id`: which client of the experiment it is (required);
- `data-root`: where this site's data is, replacing the config's `task.root` (MM-IMDb: the folder `fedmm prepare`
  wrote, of which a site needs only its own `client_<i>/`); a task that fedmm partitions (easy-VQA, synthetic) gives
  each site its share of the configured split;
- `state-dir`: where its clients' state (error-feedback residuals) lives, default `~/.fedmm/<runtime>-state`
  (see `state_dir`: the site decides, never the server).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from fedmm.experiment.server import Federation

SITE_STATE_ENV = "FEDMM_SITE_STATE_DIR"
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SITE: dict[str, Any] = {}  # the one client this process serves: {"key": ..., "site": Site, "trainer": ClientTrainer}


def partition_id(site_config: dict[str, Any]) -> int:
    if "partition-id" not in site_config:
        raise ValueError(
            "this site has no partition-id; give it one in its site settings (Flower: --node-config 'partition-id=<i>')"
        )
    return int(site_config["partition-id"])


def state_dir(site_config: dict[str, Any], request: dict[str, Any]) -> Path:
    """Where this site keeps its clients' state, decided by the site, never by the server: its `state-dir` setting
    (one folder per run below it), else $FEDMM_SITE_STATE_DIR (what fedmm's simulations set for the sites they
    start: the run directory's client_state/), else ~/.fedmm/<runtime>-state/<run>. The run's name comes from the
    server and must be a plain folder name."""
    if "state-dir" not in site_config and os.environ.get(SITE_STATE_ENV):
        return Path(os.environ[SITE_STATE_ENV])
    run, runtime = str(request.get("run", "")), str(request.get("runtime", ""))
    if not SAFE_NAME.fullmatch(run) or run in (".", ".."):
        raise ValueError(f"the server named the run {run[:40]!r}, which is not a plain folder name; refused")
    default = Path.home() / ".fedmm" / f"{runtime if runtime in ('flower', 'nvflare') else 'remote'}-state"
    return Path(str(site_config.get("state-dir", default))).expanduser() / run


@contextmanager
def simulated_sites_state(folder: Path) -> Iterator[None]:
    """For a simulation's sites, started on this machine by fedmm itself: their state goes to `folder` (the run
    directory's client_state/), set as their own environment, which the processes they run in inherit."""
    old = os.environ.get(SITE_STATE_ENV)
    os.environ[SITE_STATE_ENV] = str(Path(folder).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SITE_STATE_ENV, None)
        else:
            os.environ[SITE_STATE_ENV] = old


def fit(site_config: dict[str, Any], payload: bytes, request: dict[str, Any]) -> bytes:
    """One round of local training, or an evaluation (client_eval), for this site's client (`request["config"]` is
    its `FitInstructions` as JSON, whose `task` says which);
    the model and data of the last call are reused while the experiment is the same."""
    from fedmm.client.client import ClientTrainer
    from fedmm.config.load import settings_from_yaml
    from fedmm.config.schema import AttackConfig
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
        settings = settings_from_yaml(text)
        site = build_site(settings, cid)
        _SITE.update(
            key=key,
            site=site,
            trainer=ClientTrainer(
                site.backend,
                site.model,
                progress=False,
                state_dir=state_dir(site_config, request),
                attack=settings.typed("attack", AttackConfig),
            ),
        )
    site = _SITE["site"]
    return _SITE["trainer"].fit_bytes(cid, site.train, payload, request["config"], site.val, site.test)


def request_for_clients(fed: "Federation", runtime: str, **extra: Any) -> dict[str, Any]:
    """What every round's message to a remote client carries besides the parameters and its instructions: the
    run's settings as a site needs them (`site_settings`: no server paths) and the run's name."""
    return {"settings": site_settings(fed.settings), "run": fed.rundir.path.name, "runtime": runtime, **extra}


def site_settings(settings) -> str:
    """The run's config.yaml without what only the server's machine has (output_dir, resume)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(settings.to_yaml())
    cfg.output_dir = None
    cfg.resume = None
    return OmegaConf.to_yaml(cfg)
