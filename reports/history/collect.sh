#!/usr/bin/env bash
# Benchmark every commit of a range (test_train_step[torch-fp32]) in a detached worktree, one JSON each.
# usage: collect.sh REPO OLDEST NEWEST OUTDIR   (run from a harness venv; nice it on a shared machine)
set -euo pipefail
repo=$1 oldest=$2 newest=$3 out=$(realpath -m "$4")
mkdir -p "$out"
tmp=$(mktemp -d); trap 'git -C "$repo" worktree remove --force "$tmp/tree" 2>/dev/null; rm -rf "$tmp"' EXIT
n=0
for commit in $(git -C "$repo" rev-list --reverse "$oldest^..$newest"); do
  n=$((n + 1)); json=$(printf '%s/%02d-%s.json' "$out" "$n" "${commit:0:10}")
  [ -s "$json" ] && continue
  git -C "$repo" worktree add -q --detach "$tmp/tree" "$commit"
  mkdir -p "$tmp/shim" && ln -sfn "$tmp/tree/plugins" "$tmp/shim/harness_plugins"  # plugins/ of that commit
  (cd "$tmp/tree" && PYTHONPATH="$tmp/shim:$tmp/tree" HARNESS_BENCH_ROUNDS=${ROUNDS:-4} HARNESS_BENCH_STEPS=${STEPS:-10} \
     python -m pytest benchmarks/test_train_step.py -k torch-fp32 -q -p no:cacheprovider \
     --benchmark-json "$json.part" > "$json.log" 2>&1) && mv "$json.part" "$json"
  git -C "$repo" worktree remove --force "$tmp/tree"
  echo "$(date -u +%T) $n ${commit:0:10} done"
done
