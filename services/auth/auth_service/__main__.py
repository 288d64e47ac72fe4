"""`python -m auth_service`: run the auth service; `python -m auth_service admin ...`: the
operator commands (`python -m auth_service admin --help` lists them)."""

import sys

from auth_service.settings import Settings
from keelson.service import run_service


def _main() -> None:
    if sys.argv[1:2] == ["admin"]:
        from auth_service.cli import main

        sys.exit(main(sys.argv[2:]))
    run_service("auth_service", Settings)


if __name__ == "__main__":
    _main()
