"""The client side of an fedmm NVFlare job (NVFlare's Client API, run in the site's job process).

Arguments: `--partition-id I` (which client of the experiment this site is), `--data-root DIR` (where this site's
data is) and `--state-dir DIR` (its clients' state); see `fedmm.runtime.remote`. The script stays in its receive
loop for the whole job, so the model and the data are built once. A failure in a round is sent back to the server
as this site's error (named there with the site), and the site keeps serving later rounds.
"""

from __future__ import annotations

import argparse
import json
import traceback

import numpy as np
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel

from fedmm.runtime.remote import fit


def main() -> None:
    p = argparse.ArgumentParser(description="fedmm client for NVFlare")
    p.add_argument("--partition-id", type=int, required=True)
    p.add_argument("--data-root", default="")
    p.add_argument("--state-dir", default="")
    args = p.parse_args()
    site_config = {"partition-id": args.partition_id}
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
            request = json.loads(task.meta["fedmm"])
            request["config"] = request.pop("configs")[site]
            update = fit(site_config, np.asarray(task.params["global"], dtype=np.uint8).tobytes(), request)
            reply = FLModel(params={"update": np.frombuffer(update, dtype=np.uint8)})
        except Exception as e:  # noqa: BLE001 - reported to the server, with this site's name
            traceback.print_exc()
            reply = FLModel(params={}, meta={"error": f"{type(e).__name__}: {e}"})
        flare.send(reply)


if __name__ == "__main__":
    main()
