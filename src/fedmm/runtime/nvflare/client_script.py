"""The client side of an fedmm NVFlare job (NVFlare's Client API, run in the site's job process).

Arguments: `--partition-id I` (which client of the experiment this site is), `--site-policy FILE` (the site's
site.yaml; else $FEDMM_SITE_POLICY), `--data-root DIR` (where this site's data is) and `--state-dir DIR` (its
clients' state); see `fedmm.runtime.remote`. The script stays in its receive
loop for the whole job, so the model and the data are built once. A failure in a round is sent back to the server
as this site's refusal (a code and fedmm's message; the traceback stays in the site's log), and the site keeps
serving later rounds.
"""

from __future__ import annotations

import argparse
import json
import traceback

import numpy as np
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel

from fedmm.errors import SiteRefusal
from fedmm.runtime.remote import answer


def main() -> None:
    p = argparse.ArgumentParser(description="fedmm client for NVFlare")
    p.add_argument("--partition-id", type=int, required=True)
    p.add_argument("--data-root", default="")
    p.add_argument("--state-dir", default="")
    p.add_argument("--site-policy", default="")
    args = p.parse_args()
    site_config = {"partition-id": args.partition_id}
    if args.site_policy:
        site_config["site-policy"] = args.site_policy
    if args.data_root:
        site_config["data-root"] = args.data_root
    if args.state_dir:
        site_config["state-dir"] = args.state_dir
    flare.init()
    site = flare.get_site_name()
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        try:
            try:
                request = json.loads(task.meta["fedmm"])
                request["config"] = request.pop("configs")[site]
                payload = np.asarray(task.params["global"], dtype=np.uint8).tobytes()
            except Exception:  # noqa: BLE001 - a task this site cannot read
                traceback.print_exc()
                raise SiteRefusal("bad_request", "the site could not read the server's task") from None
            update = answer(site_config, payload, request)
            reply = FLModel(params={"update": np.frombuffer(update, dtype=np.uint8)})
        except SiteRefusal as e:  # a code and fedmm's message: all that leaves the site of a failure
            reply = FLModel(params={}, meta={"refusal": e.to_wire()})
        flare.send(reply)


if __name__ == "__main__":
    main()
