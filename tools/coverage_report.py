"""Line coverage per package from the data `make test` collected (`.coverage`).

`make test` runs pytest under `coverage run`, not pytest-cov: pytest imports its plugins
(keelson_dev.testing among them, which imports keelson) before pytest-cov starts
measuring, so every module they import would count its imports, classes and function
definitions as never run (the total read 78% for an unchanged suite).

`python tools/coverage_report.py [--fail-under N]` prints one row per package of the
workspace and the total over the modules the tests imported, and exits 1 when the total
is below N percent (`make test` passes the Makefile's COVERAGE_FLOOR). Only the test
process is measured: code that runs in subprocesses (the services `keelson up` starts)
counts where a test also imports and runs it in process.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parents[1]


def package_of(path: Path) -> str:
    """`keelson` for libs/common/keelson/..., `keelson_dev` for libs/dev/keelson_dev/...,
    else the service's package directory name."""
    parts = path.resolve().relative_to(ROOT).parts
    if parts[0] == "libs":
        return parts[2]
    if parts[0] == "services":
        return parts[2]
    return parts[0]


def main() -> int:
    parser = argparse.ArgumentParser(description="line coverage per package")
    parser.add_argument("--fail-under", type=float, default=0.0, help="the floor, in percent")
    args = parser.parse_args()
    data_file = ROOT / ".coverage"
    if not data_file.exists():
        print("no coverage data: run `make test` first", file=sys.stderr)
        return 1
    cov = coverage.Coverage(data_file=str(data_file))
    cov.load()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name in cov.get_data().measured_files():
        _, statements, _, missing, _ = cov.analysis2(name)
        row = totals[package_of(Path(name))]
        row[0] += len(statements)
        row[1] += len(missing)
    width = max(len(p) for p in totals) if totals else 7
    print(f"{'package':<{width}}  {'statements':>10}  {'missed':>7}  {'cover':>6}")
    all_statements = all_missing = 0
    for package, (statements, missing) in sorted(totals.items()):
        all_statements += statements
        all_missing += missing
        cover = 100 * (statements - missing) / statements if statements else 100.0
        print(f"{package:<{width}}  {statements:>10}  {missing:>7}  {cover:>5.1f}%")
    total = 100 * (all_statements - all_missing) / all_statements if all_statements else 100.0
    print(f"{'TOTAL':<{width}}  {all_statements:>10}  {all_missing:>7}  {total:>5.1f}%")
    if total < args.fail_under:
        print(f"coverage {total:.1f}% is below the floor of {args.fail_under:g}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
