"""A client that runs apart from the server (a Flower SuperNode, an NVFlare site): it receives the run's settings
with every round, checks them against its own site policy (`fedmm.config.site_policy`), builds its share of the
experiment from what passes once, and keeps that across rounds.

Its site settings (a Flower node config, an NVFlare site's script arguments) are:
- `partition-id`: which client of the experiment it is (required);
- `site-policy`: its policy file (site.yaml), unless $FEDMM_SITE_POLICY names one (the site's own environment
  wins: an NVFlare job's arguments are written by whoever exported the job); none: the secure defaults;
- `data-root`: where this site's data is (the policy's `data.root`, given directly); a task that fedmm partitions
  (easy-VQA, synthetic) gives each site its share of the configured split;
- `state-dir`: where its clients' state (error-feedback residuals) lives, default `~/.fedmm/<runtime>-state`
  (see `state_dir`: the site decides, never the server).

What goes back is an update or a `SiteRefusal` (`answer`): a fixed code and a message fedmm wrote; an exception's
own text stays in the site's log.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from fedmm.config.site_policy import SitePolicy, check_epochs
from fedmm.errors import FedmmError, SiteRefusal
from fedmm.fl.instructions import FitInstructions

if TYPE_CHECKING:
    from fedmm.experiment.server import Federation

log = logging.getLogger("fedmm.site")
SITE_STATE_ENV = "FEDMM_SITE_STATE_DIR"
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SITE: dict[str, Any] = {}  # the one client this process serves: {"key": ..., "site": Site, "trainer": ClientTrainer}


def partition_id(site_config: dict[str, Any]) -> int:
    value = site_config.get("partition-id")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FedmmError(
            "this site has no partition-id (a whole number >= 0); give it one in its site settings (Flower: "
            "--node-config 'partition-id=<i>', NVFlare: --partition-id)"
        )
    return value


def policy_of(site_config: dict[str, Any]) -> SitePolicy:
    """This site's policy: $FEDMM_SITE_POLICY (the site's own environment wins), else its `site-policy` setting,
    with `data-root` / `state-dir` filling what the file leaves empty."""
    from fedmm.config.site_policy import POLICY_ENV, load_policy

    path = os.environ.get(POLICY_ENV) or site_config.get("site-policy")
    return load_policy(path, **site_config)


def state_dir(site_config: dict[str, Any], request: dict[str, Any]) -> Path:
    """Where this site keeps its clients' state, decided by the site, never by the server: its `state-dir` setting
    (one folder per run below it), else $FEDMM_SITE_STATE_DIR (what fedmm's simulations set for the sites they
    start: the run directory's client_state/), else ~/.fedmm/<runtime>-state/<run>. The run's name comes from the
    server and must be a plain folder name."""
    own = site_config.get("state-dir")
    if not own and os.environ.get(SITE_STATE_ENV):
        return Path(os.environ[SITE_STATE_ENV])
    run, runtime = str(request.get("run", "")), str(request.get("runtime", ""))
    if not SAFE_NAME.fullmatch(run) or run in (".", ".."):
        raise SiteRefusal("bad_request", "the server named the run with something that is not a plain folder name")
    default = Path.home() / ".fedmm" / f"{runtime if runtime in ('flower', 'nvflare') else 'remote'}-state"
    return Path(str(own or default)).expanduser() / run


@contextmanager
def simulated_sites(settings, rundir: Path) -> Iterator[None]:
    """For a simulation's sites, started on this machine by fedmm itself: their state goes to the run directory's
    client_state/, and their policy (client_state/site_policy.yaml) gives them the run's own paths, plugins and
    model sources, set as their own environment, which the processes they run in inherit."""
    from fedmm.config.site_policy import POLICY_ENV, simulation_policy, write_policy

    state = Path(rundir).resolve() / "client_state"
    policy = write_policy(simulation_policy(settings), state / "site_policy.yaml")
    old = {k: os.environ.get(k) for k in (SITE_STATE_ENV, POLICY_ENV)}
    os.environ[SITE_STATE_ENV], os.environ[POLICY_ENV] = str(state), str(policy)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def answer(site_config: dict[str, Any], payload: bytes, request: Any) -> bytes:
    """`fit`, with every failure turned into what may leave the site: a `SiteRefusal` as it is (its message is
    fedmm's), anything else as `site_error` with a reference into the site's log, where the whole error goes."""
    try:
        if not isinstance(request, dict):
            raise SiteRefusal("bad_request", "the request is not a mapping")
        return fit(site_config, payload, request)
    except SiteRefusal as e:
        log.warning("refused the server's request: %s", e)
        raise
    except Exception as e:  # noqa: BLE001 - nothing of an exception's text leaves the site
        ref = secrets.token_hex(4)
        log.error("request failed (reference %s): %s: %s", ref, type(e).__name__, e, exc_info=True)
        raise SiteRefusal(
            "site_error", f"the site could not serve this request; its operator's log has the details (reference {ref})"
        ) from None


def fit(site_config: dict[str, Any], payload: bytes, request: dict[str, Any]) -> bytes:
    """One round of local training, or an evaluation (client_eval), for this site's client (`request["config"]` is
    its `FitInstructions` as JSON, whose `task` says which);
    the model and data of the last call are reused while the experiment is the same."""
    from fedmm.client.client import ClientTrainer
    from fedmm.config.schema import AttackConfig
    from fedmm.config.site_policy import apply_policy, parse_server_settings
    from fedmm.experiment.site import build_site

    cid = partition_id(site_config)
    policy = policy_of(site_config)
    site_config = {**site_config, "state-dir": policy.state_dir}
    instructions = check_instructions(request.get("config"), policy)
    folder = state_dir(site_config, request)
    key = (request.get("settings"), cid, repr(policy), str(folder))
    if _SITE.get("key") != key:
        _SITE.clear()
        from fedmm.config.load import validate_site

        settings = validate_site(apply_policy(parse_server_settings(request.get("settings")), policy))
        site = build_site(settings, cid)
        _SITE.update(
            key=key,
            site=site,
            trainer=ClientTrainer(
                site.backend,
                site.model,
                progress=False,
                state_dir=folder,
                attack=settings.typed("attack", AttackConfig),
            ),
        )
    site = _SITE["site"]
    return _SITE["trainer"].fit_bytes(cid, site.train, payload, instructions, site.val, site.test)


def check_instructions(data: Any, policy: SitePolicy) -> Any:
    """A round's `FitInstructions` from the server, typed and within the policy, or a `SiteRefusal`."""
    if not isinstance(data, dict):
        raise SiteRefusal("bad_request", "the round's instructions are not a mapping")
    try:
        ins = FitInstructions.from_json(data)
    except (TypeError, ValueError):
        raise SiteRefusal("bad_request", "the round's instructions have unknown or missing fields") from None
    if ins.task not in ("fit", "evaluate"):
        raise SiteRefusal("bad_request", "the round's task is neither fit nor evaluate")
    if ins.task == "evaluate" and not policy.client_eval:
        raise SiteRefusal("no_client_eval", "this site does not take part in client-side evaluation")
    if not isinstance(ins.round, int) or isinstance(ins.round, bool) or ins.round < 1:
        raise SiteRefusal("bad_request", "the round number is not a positive integer")
    if policy.max_rounds is not None and ins.round > policy.max_rounds:
        raise SiteRefusal("limit", f"round {ins.round} is over this site's max_rounds={policy.max_rounds}")
    if policy.strategies and ins.strategy not in policy.strategies:
        raise SiteRefusal("not_allowed", f"strategy '{str(ins.strategy)[:60]}' is not among this site's strategies")
    check_epochs(ins.local_epochs, policy, "local_epochs")
    check_epochs(ins.personal_epochs, policy, "personal_epochs")
    return ins


def request_for_clients(fed: "Federation", runtime: str, **extra: Any) -> dict[str, Any]:
    """What every round's message to a remote client carries besides the parameters and its instructions: the
    run's settings as a site needs them (`site_settings`: no server paths) and the run's name."""
    return {"settings": site_settings(fed.settings), "run": fed.rundir.path.name, "runtime": runtime, **extra}


def site_settings(settings) -> str:
    """The run's config.yaml as sites take it: without what only the server uses (output_dir, resume, tracking,
    launcher) and with every site-owned option (paths, folders) cleared: each site sets its own."""
    from fedmm.config.site_policy import for_sites

    return for_sites(settings.to_yaml())
