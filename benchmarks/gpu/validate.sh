#!/usr/bin/env bash
# GPU validation (issue 10): the flowers seed recipe through `harness run`, timed short pass, then one long cell.
#   benchmarks/gpu/validate.sh [--device cuda|cpu] [--epochs N] [--data DIR] [--out DIR] [--budget S] [--export DIR]
# --epochs: epochs of the short pass (default 3); --budget: wall seconds for the whole script (default 500): every
# harness run is cut (SIGINT, finished epochs kept) so the script ends within it; the long cell gets the faster of
# bf16/fp16 for as many epochs (<= 200) as fit in what the short pass leaves.
# Data: .gpu_data/flowers224, made by benchmarks/gpu/reencode.py (re-encoded photos, shorter side 224 px).
# Writes OUT/short, OUT/long (result stores), OUT/report, OUT/validate.log, OUT/table.txt and OUT/results.tgz
# (all of it); --export DIR also copies results.tgz, table.txt and validate.log there, whatever happened.
set -uo pipefail
START=$SECONDS
DEVICE=cuda SHORT=3 DATA=.gpu_data/flowers224 BUDGET=500 DEST=${OUT:-runs/gpu-validate} EXPORT=
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2;; --epochs) SHORT=$2; shift 2;; --data) DATA=$2; shift 2;;
    --out) DEST=$2; shift 2;; --budget) BUDGET=$2; shift 2;; --export) EXPORT=$2; shift 2;;
    *) echo "validate.sh: unknown argument $1" >&2; exit 2;;
  esac
done
REPO=$(cd "$(dirname "$0")/../.." && pwd)
SUITE=$REPO/benchmarks/gpu/flowers-gpu.toml
[ "$DEVICE" = cpu ] && SUITE=$REPO/benchmarks/gpu/flowers-cpu.toml
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$DEST"
exec > >(tee -a "$DEST/validate.log") 2>&1

pack() {  # on every exit: bundle whatever the runs wrote, so a cut run still brings its results back
  local parts=() p
  for p in short long report table.txt validate.log; do [ -e "$DEST/$p" ] && parts+=("$p"); done
  # checkpoints (44 MB each) stay behind: the device returns at most 16 MiB per file
  [ ${#parts[@]} -gt 0 ] && tar -czf "$DEST/results.tgz" --exclude=checkpoint.pt -C "$DEST" "${parts[@]}"
  if [ -n "$EXPORT" ]; then
    mkdir -p "$EXPORT" && cp "$DEST/results.tgz" "$DEST/validate.log" "$EXPORT/" 2>/dev/null
    [ -e "$DEST/table.txt" ] && cp "$DEST/table.txt" "$EXPORT/"
  fi
  return 0
}
trap pack EXIT
left() { echo $((BUDGET - (SECONDS - START) - $1)); }  # seconds of the budget left, keeping $1 in hand

# Install without the network (the device has torch, timm, pluggy, pandas); fall back to PYTHONPATH.
if ! $PY -c 'import harness, harness_plugins' 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" 2>&1 | tail -3
fi
if ! $PY -c 'import harness, harness_plugins' 2>/dev/null; then
  mkdir -p /tmp/hsite && ln -sfn "$REPO/plugins" /tmp/hsite/harness_plugins
  export PYTHONPATH=/tmp/hsite:$REPO${PYTHONPATH:+:$PYTHONPATH}  # no entry points: name the built-ins
  export HARNESS_PLUGIN_MODULES=harness_plugins.torchvision_loader,harness_plugins.timm_models,harness_plugins.torch_backend
fi
$PY -c 'import harness, harness_plugins, torch; print("harness OK; torch", torch.__version__,
  "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())' || exit 3
[ -d "$DATA" ] || { echo "validate.sh: no data at $DATA (run benchmarks/gpu/reencode.py)" >&2; exit 2; }
echo "photos: $(find "$DATA" -type f | wc -l) in $DATA (re-encoded copy, shorter side ~224 px)"
HARNESS=("$PY" -c 'import sys; from harness.cli import main; sys.exit(main())')
run_cut() {  # run_cut SECONDS ARGS...: harness run, interrupted (finished epochs kept) when SECONDS are up
  local limit=$1; shift
  [ "$limit" -gt 10 ] || { echo "validate.sh: no time left for: harness run $*"; return 124; }
  timeout -s INT -k 15 "$limit" "${HARNESS[@]}" run --suite "$SUITE" --data "$DATA" --device "$DEVICE" "$@"
}

echo "== short pass: $SHORT epochs per cell ($(date -u +%T))"
SHORT_START=$SECONDS
run_cut "$(left 60)" --out "$DEST/short" --epochs "$SHORT"
echo "short pass exit $?; took $((SECONDS - SHORT_START)) s"

RUNS=("$DEST/short") EPOCHS=0 PREC=
LEFT=$(left 40)  # 40 s kept for the report and packing
read -r PREC EPOCHS < <($PY "$REPO/benchmarks/gpu/plan.py" epochs "$DEST/short" "$LEFT" $((SECONDS - SHORT_START)))
[ "$DEVICE" = cpu ] && EPOCHS=$(( EPOCHS < SHORT + 1 ? EPOCHS : SHORT + 1 ))
if [ "${EPOCHS:-0}" -gt 0 ]; then
  echo "== long cell: $PREC for $EPOCHS epochs, $LEFT s left ($(date -u +%T))"
  run_cut "$LEFT" --out "$DEST/long" --epochs "$EPOCHS" --only "precision=$PREC"
  echo "long cell exit $?; $((SECONDS - START)) s so far"
  RUNS+=("$DEST/long")
else
  echo "== no time left for a long cell"
fi

"${HARNESS[@]}" report "${RUNS[@]}" --out "$DEST/report" --format md,csv
STATUS=$?
echo "== $DEVICE validation: $((SECONDS - START)) s (photos re-encoded to shorter side ~224 px)"
$PY "$REPO/benchmarks/gpu/plan.py" table "$DEST/report/summary.csv" | tee "$DEST/table.txt"
exit $STATUS
