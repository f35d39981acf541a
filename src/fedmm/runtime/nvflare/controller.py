"""The server side of an NVFlare job: fedmm's server loop inside a ModelController.

NVFlare calls `run()` in the server's job process. It builds the experiment from the job's configuration (the
run's config.yaml, as `fedmm run` would) and hands fedmm's server loop a `fit_clients` that sends the global
parameters to the sampled sites with `send_model_and_wait`. Sites are the job's site names, client i being
`sites[i]`; each site's round config travels in the task's meta.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from fedmm.fl.instructions import FitInstructions
from fedmm.fl.server import Reply

ERROR_FILE = "error.txt"  # a run that stopped on a user error says why here (the job's own log has it too)


class FedmmController(ModelController):
    def __init__(self, config: str, sites: list[str], round_timeout: int = 600, task_check_period: float = 0.1):
        # resilient: a failed site is recorded by fedmm's server loop (min_clients decides), never a panic here;
        # no NVFlare persistor: fedmm writes its own checkpoints into the run directory
        super().__init__(
            persistor_id="",
            ignore_result_error=True,
            allow_empty_global_weights=True,
            task_check_period=task_check_period,
        )
        self.config = config
        self.sites = list(sites)
        self.round_timeout = int(round_timeout)
        self.request: dict[str, Any] = {}

    def run(self) -> None:
        from fedmm.config.load import settings_from_yaml
        from fedmm.errors import FedmmError
        from fedmm.runtime.base import serve

        settings = settings_from_yaml(self.config)
        try:
            serve(settings, self.connect, announce=self.info)
        except FedmmError as e:  # one line where the run's outputs go, then NVFlare ends the job
            out = Path(settings.resume or settings.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / ERROR_FILE).write_text(f"{e}\n")
            self.panic(f"error: {e}")

    def connect(self, fed) -> "FedmmController":
        """`connect` for `fedmm.runtime.base.serve`: the job's sites are the federation's clients, in order."""
        from fedmm.errors import FedmmError
        from fedmm.runtime.remote import request_for_clients

        if len(fed.clients) != len(self.sites):
            raise FedmmError(
                f"the job names {len(self.sites)} sites but the experiment has {len(fed.clients)} "
                f"clients; export it again with one --site per client"
            )
        self.request = request_for_clients(fed, "nvflare")
        return self.fit_clients

    def fit_clients(
        self, rnd: int, ids: list[int], payload: bytes, configs: dict[int, FitInstructions]
    ) -> dict[int, Reply]:
        targets = [self.sites[c] for c in ids]
        request = {**self.request, "configs": {self.sites[c]: configs[c].to_json() for c in ids}}
        task = FLModel(
            params={"global": np.frombuffer(payload, dtype=np.uint8)},
            current_round=rnd,
            meta={"fedmm": json.dumps(request)},
        )
        name = "validate" if all(configs[c].task == "evaluate" for c in ids) else "train"  # client_eval: validate
        results = self.send_model_and_wait(task_name=name, data=task, targets=targets, timeout=self.round_timeout)
        by_site = {getattr(r, "meta", {}).get("client_name"): r for r in results if isinstance(r, FLModel)}
        return {cid: result_of(by_site.get(site), site, self.round_timeout) for cid, site in zip(ids, targets)}


def result_of(result: Any, site: str, timeout: int) -> Reply:
    """A site's task result as the server loop takes it: the update's bytes, or the exception that names what is
    wrong (its refusal, no result, a result without a uint8 update), recorded as that client's failure."""
    from fedmm.errors import SiteRefusal

    if result is None:
        return RuntimeError(
            f"site {site}: no result (its script failed or the round timed out after {timeout}s; the site's log "
            f"has the details)"
        )
    meta = result.meta if isinstance(result.meta, dict) else {}
    if "refusal" in meta:
        return SiteRefusal.from_wire(meta["refusal"])
    update = result.params.get("update") if isinstance(result.params, dict) else None
    if not isinstance(update, np.ndarray) or update.dtype != np.uint8 or update.ndim != 1:
        return ValueError(f"site {site}: its result has no update (a 1-D uint8 array)")
    return update.tobytes()
