"""Writes `problems.conf`: the edge's own error answers as RFC 9457 problem+json, with the
status, title and problem type `keelson.errors` gives the gateway's answers.

    .venv/bin/python deploy/nginx/problems.py        # after changing keelson.errors or below

tests/test_deploy.py fails when the file and this script differ, so the edge's vocabulary
cannot drift from the gateway's.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from keelson.errors import KeelsonError

__all__ = ["EDGE_PROBLEMS", "NGINX_STATUSES", "PREFIX", "problem", "rendered"]

TARGET = Path(__file__).with_name("problems.conf")
# Where the problems are, inside the edge. Not named locations: nginx refuses to redirect a
# request whose line it could not parse (it has no URI) to a named location, and would
# answer 500 text/html instead. Requests from outside for these paths are 404 (`internal`).
PREFIX = "/.keelson-edge/problem/"

# Every status nginx answers itself in front of the gateway, with the detail it says.
EDGE_PROBLEMS: dict[int, str] = {
    400: "The request could not be parsed.",
    404: "Nothing is here.",
    405: "The edge does not allow this method.",
    # nginx closes a timed-out connection without an answer today; should one go out:
    408: "The request took too long to arrive; the connection is closed.",
    411: "The request needs a Content-Length.",
    413: "The request body is too large.",
    414: "The request target is too long.",
    431: "The request head is too large.",
    500: "The edge failed to handle the request.",
    501: "The request uses a transfer coding the edge does not implement.",
    502: "The gateway did not answer.",
    503: "The gateway is unavailable.",
    504: "The gateway did not answer in time.",
    505: "The HTTP version is not supported.",
}
# nginx's own codes that never go out as such: 494 is a head over
# large_client_header_buffers (nginx sends it as 400); it is a 431 here.
NGINX_STATUSES: dict[int, int] = {494: 431}


def problem(status: int) -> bytes:
    """The problem body the edge answers `status` with."""
    body = KeelsonError.for_status(status, EDGE_PROBLEMS[status]).problem()
    return orjson.dumps(body)


def rendered() -> str:
    """The contents of problems.conf."""
    lines = [
        "# Written by deploy/nginx/problems.py from keelson.errors: do not edit.",
        "# Every answer nginx makes itself is problem+json; the gateway's own answers pass",
        "# through untouched (proxy_intercept_errors off in edge.conf).",
    ]
    for status in EDGE_PROBLEMS:
        lines.append(f"error_page {status} {PREFIX}{status};")
    for nginx_status, status in NGINX_STATUSES.items():
        lines.append(f"error_page {nginx_status} ={status} {PREFIX}{status};")
    for status in EDGE_PROBLEMS:
        body = problem(status).decode()
        # A single-quoted nginx string: no quote, backslash or variable may be in it.
        assert not set(body) & set("'\\$"), body
        lines += [
            "",
            f"location = {PREFIX}{status} {{",
            "    internal;",
            "    default_type application/problem+json;",
            f"    return {status} '{body}';",
            "}",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    TARGET.write_text(rendered())
