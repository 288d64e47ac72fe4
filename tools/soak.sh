#!/usr/bin/env bash
# `make soak`: the fault suite (tests/system/test_faults.py and test_outages.py) round after
# round until SOAK_ROUNDS rounds have passed or SOAK_SECONDS have elapsed, whichever is
# first; stops at the first failing round. The report (every case's FAULT line, per round)
# goes to loadtests/reports/soak-<time>.txt; pytest's own output beside it.
set -euo pipefail
rounds=${SOAK_ROUNDS:-5}
budget=${SOAK_SECONDS:-3600}
bin=${BIN:-.venv/bin}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p loadtests/reports
report=loadtests/reports/soak-$stamp.txt
log=loadtests/reports/soak-$stamp.log
started=$SECONDS
echo "soak $stamp: up to $rounds rounds within ${budget}s" | tee "$report"
for round in $(seq 1 "$rounds"); do
  if (( SECONDS - started >= budget )); then
    echo "time budget spent after $((round - 1)) rounds" | tee -a "$report"
    break
  fi
  echo "round $round" | tee -a "$report"
  set +e
  "$bin/pytest" tests/system/test_faults.py tests/system/test_outages.py -s -q \
    -p no:cacheprovider >"$log.round$round" 2>&1
  status=$?
  set -e
  grep '^FAULT' "$log.round$round" | tee -a "$report" || true
  tail -n 1 "$log.round$round" | tee -a "$report"
  if (( status != 0 )); then
    echo "round $round failed; see $log.round$round" | tee -a "$report"
    exit "$status"
  fi
done
echo "done in $((SECONDS - started))s; report: $report" | tee -a "$report"
