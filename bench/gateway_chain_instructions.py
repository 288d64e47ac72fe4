"""The pipeline's own chain, in-process, under callgrind: a steadier count than the whole app's.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --instr-atstart=no \\
        --callgrind-out-file=/tmp/gc.%p .venv/bin/python bench/gateway_chain_instructions.py \\
        1000 --callgrind-window
    (the same with 3000; figure = (total(3000) - total(1000)) / 2000)

With `--callgrind-window` only the measured requests are counted (`callgrind_control -i
on`, then `off`): start-up, some 20 billion instructions, runs uninstrumented and the
difference of two runs is that of two similar numbers, not of two huge ones.

`bench/gateway_inprocess_instructions.py` runs the whole app, whose count holds the rate
limiter's and the revocation check's work on the clock (Redis round trips every second or
so), which moves by thousands of instructions a request from one run to the next. This
runs the same authenticated GET against nginx through `gateway.app.create_app` without
Redis, the rate limiter, the access log or the message bus: what is left is
`ServiceMiddleware`, the pipeline's context, security (a cached token, identity headers),
encryption's pass-through, validation, routing's match and the proxy on its upstream
pool (on uvloop, as the gateway is served), the layers a change to the chain moves. The
work done by the clock is kept out too (an OpenAPI document for the upstream, no broker
to probe, the identity header and the JWKS renewed once a day): callgrind slows a run to
minutes, more on a busy machine, and each 10 s re-signature would count. The statuses
must all be 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import uvloop

# This file's folder holds bench/gateway.py: it is imported first, under that name.
from _gateway_rig import drive_in_turn, in_process_gateway


def _instrument(on: bool) -> None:
    state = "on" if on else "off"
    subprocess.run(
        ["callgrind_control", "-i", state, str(os.getpid())], check=True, capture_output=True
    )


def _quiet(values: dict[str, Any], tmp: Path) -> None:
    """Nothing on the clock: work a run slowed by callgrind would count by the wall clock,
    not by the request."""
    # Only the upstream nginx answers for, with an OpenAPI document (of no paths, in the
    # one file nginx serves): an upstream without one is asked for it every 5 s, and
    # those fetches would be counted by the wall clock, not by the request.
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps({**json.loads(jwks.read_text()), "paths": {}}))
    logs = values["plugins"]["routing"]["upstreams"]["logs"]
    logs["openapi_path"] = "/.well-known/jwks.json"
    values["plugins"]["routing"]["upstreams"] = {"logs": logs}
    values["plugins"]["routing"]["openapi_refresh_seconds"] = 86400
    values["plugins"]["rate_limiting"] = {"enabled": False}
    # No broker: its probes, each second, would be counted by the clock too.
    values["plugins"]["message_bus"] = {"enabled": False}
    values["plugins"]["bus"] = {"enabled": False}
    # The identity header signed again, and the JWKS fetched again, once a day, not
    # every 10 s and 10 min of a run that callgrind makes last minutes.
    values["plugins"]["auth"]["identity_max_age_seconds"] = 6 * 86400
    values["plugins"]["auth"]["jwks_max_age_seconds"] = 86400
    values["plugins"]["access_log"] = {"enabled": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=int)
    parser.add_argument(
        "--callgrind-window",
        action="store_true",
        help="count only the measured requests (run under valgrind --instr-atstart=no)",
    )
    args = parser.parse_args()
    counted = _instrument if args.callgrind_window else None
    # uvloop, as `gateway/serve.py` runs the gateway: its clock and callbacks are C.
    with (
        in_process_gateway("keelson-bench-chain-", None, shape=_quiet, level="WARNING") as (
            app,
            bearer,
        ),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(drive_in_turn(app, bearer, args.requests, counted=counted))
    print(f"{args.requests} requests, all 200")


if __name__ == "__main__":
    main()
