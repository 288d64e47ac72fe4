"""The gateway app's own instructions per request, in-process, under callgrind.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/gw.%p \\
        .venv/bin/python bench/gateway_inprocess_instructions.py 1000 \\
        --redis-url redis://127.0.0.1:6379/5
    (the same with 3000; figure = (total(3000) - total(1000)) / 2000)

`bench/gateway_instructions.py` counts a whole server (granian and all) under load and
takes long; this drives `gateway.app.create_app` (the whole chain of `bench/gateway.py`,
the access log as JSON to /dev/null) in this process, one request after another, with N
authenticated GETs against nginx answering `{"ok":true}`. Start-up, warm-up and
shut-down are the same whatever N is, so the difference between two runs with different N,
divided by the difference in N, is the per-request cost of the app and the Python
libraries below it (the server's own part is not in it). Deterministic enough to measure
a change of a few hundred instructions; the statuses must all be 200.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from _gateway_rig import drive_in_turn, in_process_gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=int)
    parser.add_argument("--redis-url", default=os.environ.get("KEELSON_REDIS_URL"))
    args = parser.parse_args()
    with in_process_gateway("keelson-bench-inprocess-", args.redis_url) as (app, bearer):
        asyncio.run(drive_in_turn(app, bearer, args.requests))
    print(f"{args.requests} requests, all 200")


if __name__ == "__main__":
    main()
