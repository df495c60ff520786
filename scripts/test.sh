#!/usr/bin/env bash
# `make test`: every test suite (`cargo test --no-fail-fast`), then the tests that did not run
# and why. Tests that need the real PASCAL VOC photos (WSSS_VOC_DATA, default ../shared/data)
# print `SKIPPED <test>: <reason>` where they are missing and return; this lists them again at
# the end, so that a skip is never read as a pass.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"${CARGO:-cargo}" test --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
skipped=$(grep -o 'SKIPPED .*' "$log" | sort -u || true)
if [ -n "$skipped" ]; then
  echo
  echo "NOT RUN: $(grep -c . <<< "$skipped") test(s) did not run (not failures, not passes):"
  sed 's/^SKIPPED /  /' <<< "$skipped"
fi
exit "$status"
