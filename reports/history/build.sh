#!/usr/bin/env bash
# Build reports/history/ from collect.sh's JSON files: the history (data/), its page (page/) and check (check.txt).
# usage: reports/history/build.sh RUNS_DIR   (from the repository root, in a harness venv; REPO: the git repository)
set -euo pipefail
runs=$1 here=reports/history repo=${REPO:-.}
rm -rf "$here/data" "$here/page" "$here/page-raw"
harness history record "$here/data" "$runs"/*.json --repo "$repo" --machine amd-epyc-2core > /dev/null
harness history page "$here/data" --out "$here/page" --select '*time_vs_reference' \
  --title "harness: test_train_step[torch-fp32] time_vs_reference over 18 commits (AMD EPYC, 2 shared cores)"
harness history page "$here/data" --out "$here/page-raw" --select '*torch-fp32]' \
  --title "harness: test_train_step[torch-fp32] raw seconds per round (load-dependent) over 18 commits"
{ harness history check "$here/data" --select '*time_vs_reference' --recent 18 --json "$here/check.json" || true
  echo; harness history check "$here/data" --select '*torch-fp32]' --recent 18 || true; } > "$here/check.txt"
