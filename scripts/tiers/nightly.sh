#!/usr/bin/env bash
# The nightly GPU run: install the PyTorch nightly (+ torchao), run the numerics tier and the perf tier against
# the baseline, append the records to the history, draw trend plots, find change points, confirm regressions,
# explain them per kernel, and write the markdown summary. Everything lands under one output directory.
#
# Usage: scripts/tiers/nightly.sh [--allow-installed] [--skip-install] [--index-url URL] [--torch-version V]
#                           [--date YYYY-MM-DD] [--group GROUP] [--gpus N|all] [--out DIR]
#   --allow-installed   when the nightly index cannot be reached, run against the torch already installed
#                       (also NIGHTLY_ALLOW_INSTALLED=1); without it an unreachable index exits 2.
#   --skip-install      do not try to install anything (local runs against the current environment).
#   --install-project   after the nightly, `pip install -e '.[test,nvml]'` (a fresh environment: tox -e nightly).
#   --gpus N|all        one worker per GPU in both tiers (gpu-tier.sh / perf-tier.sh --gpus N: the groups and test
#                       modules sharded over N GPUs, the multi-GPU groups run on them afterwards); default all = the
#                       GPUs this runner shows (1 without any), so the nightly's wall time falls with the GPU count.
# Environment (all optional):
#   OUT                      output directory (default runs/nightly/<date>); --out wins
#   FLUXPERF_TORCH_INDEX     nightly wheel index (default https://download.pytorch.org/whl/nightly/cu130)
#   NIGHTLY_TORCH_VERSION    exact torch nightly (default: newest on the index)
#   FLUXPERF_HISTORY         the history file; keep it on persistent storage on a runner (default $OUT/history.jsonl)
#   FLUXPERF_BASELINES       baselines root (default baselines)
#   NIGHTLY_PERF_GROUP       perf-tier group (default all)
#   NIGHTLY_GPUS             as --gpus (default all); more GPUs than the runner shows is refused (exit 64)
#   NIGHTLY_GPU_TIER / NIGHTLY_PERF_TIER   the tier commands (default scripts/tiers/gpu-tier.sh / scripts/tiers/perf-tier.sh)
#   NIGHTLY_BUNDLE=1         pack all outputs into $OUT/nightly.tar.gz (for the device tool: few files come back)
# Exit status: 0 nothing to report (an unconfirmed single bad night included), 1 numerics tier failed (also when
#   it ran no test: its exit 14), 2 nightly install impossible (and --allow-installed not given), 3 nightly install
#   failed, 10 confirmed perf regression, 11 perf inconclusive after the confirming re-run, other: the perf tier's
#   own status (tests erroring; 12 baseline error, 13 no baseline for this GPU, 14 nothing measured); 64 a bad
#   argument or --gpus / NIGHTLY_GPUS beyond the GPUs this runner shows (nothing run).
set -uo pipefail

ALLOW=${NIGHTLY_ALLOW_INSTALLED:-0}
SKIP_INSTALL=0
INSTALL_PROJECT=0
INDEX=${FLUXPERF_TORCH_INDEX:-https://download.pytorch.org/whl/nightly/cu130}
TORCH_VERSION=${NIGHTLY_TORCH_VERSION:-}
DATE=${NIGHTLY_DATE:-$(date -u +%F)}
GROUP=${NIGHTLY_PERF_GROUP:-all}
GPUS=${NIGHTLY_GPUS:-all}
GPUS_FROM=NIGHTLY_GPUS; [ -n "${NIGHTLY_GPUS:-}" ] || GPUS_FROM=--gpus  # whom a refusal names
OUT_DIR=${OUT:-}
needs_value() { [ "$1" -ge 2 ] || { echo "nightly.sh: $2 needs a value (see --help). Fix: $2 VALUE" >&2; exit 64; }; }
while [ $# -gt 0 ]; do
  case "$1" in --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;; esac  # --opt=value, as the tiers accept
  case "$1" in
    --allow-installed) ALLOW=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --install-project) INSTALL_PROJECT=1 ;;
    --index-url) needs_value $# "$1"; INDEX=$2; shift ;;
    --torch-version) needs_value $# "$1"; TORCH_VERSION=$2; shift ;;
    --date) needs_value $# "$1"; DATE=$2; shift ;;
    --group) needs_value $# "$1"; GROUP=$2; shift ;;
    --gpus) GPUS=${2-}; GPUS_FROM=--gpus; [ $# -gt 1 ] && shift ;;
    --out) needs_value $# "$1"; OUT_DIR=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "nightly.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if [ "$GPUS_FROM" = --gpus ]; then SAID="--gpus '$GPUS'"; else SAID="NIGHTLY_GPUS='$GPUS'"; fi
case "$GPUS" in all|[1-8]) ;; *) echo "nightly.sh: $SAID: the GPUs to shard the tiers over, 1 to 8 or all (every GPU this runner shows). Fix: e.g. --gpus 2" >&2; exit 64 ;; esac
OUT_DIR=${OUT_DIR:-runs/nightly/$DATE}
mkdir -p "$OUT_DIR"/records "$OUT_DIR"/plots "$OUT_DIR"/explain
OUT_DIR=$(cd "$OUT_DIR" && pwd)
HISTORY=${FLUXPERF_HISTORY:-$OUT_DIR/history.jsonl}
export FLUXPERF_HISTORY=$HISTORY FLUXPERF_TORCH_INDEX=$INDEX PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
"$PY" -c 'import fluxperf' 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # not pip-installed
source scripts/tiers/aoti-preload.sh  # AOTInductor packages that carry their own libstdc++ (../shared/DEVICE.md)
GPU_TIER=${NIGHTLY_GPU_TIER:-scripts/tiers/gpu-tier.sh}
PERF_TIER=${NIGHTLY_PERF_TIER:-scripts/tiers/perf-tier.sh}
NOTES=()
log() { echo "[nightly] $*" | tee -a "$OUT_DIR/nightly.log"; }
fluxperf() { "$PY" -m fluxperf "$@"; }

# -- 1. install the nightly ------------------------------------------------------------------------------
if [ "$SKIP_INSTALL" = 1 ]; then
  NOTES+=("nightly install skipped (--skip-install)")
else
  fluxperf nightly install --index-url "$INDEX" ${TORCH_VERSION:+--torch-version "$TORCH_VERSION"} \
    2>&1 | tee -a "$OUT_DIR/nightly.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 2 ]; then
    if [ "$ALLOW" != 1 ]; then
      log "nightly install impossible (index $INDEX unreachable); pass --allow-installed to test the installed torch"
      exit 2
    fi
    NOTES+=("nightly install impossible (index $INDEX unreachable): ran against the installed torch")
  elif [ "$rc" != 0 ]; then
    log "nightly install failed (exit $rc)"; exit 3
  fi
fi
if [ "$INSTALL_PROJECT" = 1 ]; then
  "$PY" -m pip install --quiet -e ".[test,nvml]" 2>&1 | tee -a "$OUT_DIR/nightly.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { log "installing the project failed"; exit 3; }
fi
# one interpreter start (torch imports take seconds): "<torch version> <gpu slug> <visible GPUs>"
read -r TORCH_NOW SLUG VISIBLE < <("$PY" -c 'import torch
from fluxperf.env import gpu_info, gpu_slug
info = gpu_info()
print(torch.__version__, info["slug"] if info else gpu_slug(None), torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo "not-importable cpu 0")
log "torch under test: $TORCH_NOW (GPU $SLUG)"
if [ "$GPUS" = all ]; then GPUS=$(( VISIBLE > 8 ? 8 : (VISIBLE < 1 ? 1 : VISIBLE) ))
elif [ "$GPUS" -gt "$(( VISIBLE < 1 ? 1 : VISIBLE ))" ]; then
  log "refused: ${SAID//\'/} but this runner shows $VISIBLE GPU(s) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}). Fix: --gpus all, or at most $(( VISIBLE < 1 ? 1 : VISIBLE ))"
  exit 64
fi
log "tiers sharded over $GPUS GPU(s) (this runner shows $VISIBLE)"
NOTES+=("torch under test: $TORCH_NOW (GPU $SLUG)")
BASELINE_DIR=${FLUXPERF_BASELINES:-baselines}/$SLUG

# -- 2. numerics tier ------------------------------------------------------------------------------------
log "numerics tier: $GPU_TIER"
OUT="$OUT_DIR/numerics" bash "$GPU_TIER" --gpus "$GPUS" 2>&1 | tee "$OUT_DIR/numerics.log"
RC_NUM=${PIPESTATUS[0]}
log "numerics tier exit $RC_NUM"

# -- 3. perf tier (+ one confirming re-run with kernel tables when anything is flagged) -------------------
# scripts/tiers/perf-tier.sh GROUP --compare [-- PYTEST_ARGS]: exit 0 pass, 10 regression, 11 inconclusive, 12 baseline
# error; it packs every group's benchmark JSON into $OUT/perf-GROUP.tar.gz.
run_perf() {  # $1 = attempt number; further args go to pytest (after the tier's `--`)
  local attempt=$1; shift
  local dir="$OUT_DIR/perf$attempt"
  local pytest_args=(); [ $# -gt 0 ] && pytest_args=(-- "$@")
  OUT="$dir" bash "$PERF_TIER" "$GROUP" --compare --gpus "$GPUS" "${pytest_args[@]}" 2>&1 | tee "$OUT_DIR/perf$attempt.log"
  local rc=${PIPESTATUS[0]}
  # every group's --benchmark-json is in the tier's tarball ($dir/<group>.json is only the last group's)
  mkdir -p "$dir/unpacked"
  [ -f "$dir/perf-$GROUP.tar.gz" ] && tar -xzf "$dir/perf-$GROUP.tar.gz" -C "$dir/unpacked" 2>/dev/null
  local records=() f
  for f in "$dir"/unpacked/*.json; do
    [ -s "$f" ] && grep -q '"benchmarks"' "$f" && records+=("$f")
  done
  [ ${#records[@]} = 0 ] && [ -s "$dir/$GROUP.json" ] && records=("$dir/$GROUP.json")
  for f in "${records[@]}"; do cp "$f" "$OUT_DIR/records/attempt$attempt-$(basename "$f")"; done
  if [ ${#records[@]} -gt 0 ]; then
    local base=(); [ -f "$BASELINE_DIR/0001_baseline.json" ] && base=(--baseline "$BASELINE_DIR")  # none: the tier said 13
    fluxperf history append --records "${records[@]}" --date "$DATE" --attempt "$attempt" "${base[@]}" \
      2>&1 | tee -a "$OUT_DIR/nightly.log"
  else
    log "perf attempt $attempt wrote no benchmark records"
  fi
  return "$rc"
}
log "perf tier: $PERF_TIER $GROUP"
run_perf 1; RC_PERF1=$?
fluxperf history confirm --date "$DATE" --names-out "$OUT_DIR/flagged.txt" >/dev/null 2>&1; RC_CONF=$?
RC_PERF2=-
if [ "$RC_PERF1" = 10 ] || [ "$RC_PERF1" = 11 ] || [ "$RC_CONF" = 1 ] || [ "$RC_CONF" = 3 ]; then
  log "perf attempt 1 flagged something (tier exit $RC_PERF1, confirm $RC_CONF): confirming re-run with kernel tables"
  run_perf 2 --fluxperf-kernel-tables; RC_PERF2=$?
fi
fluxperf history confirm --date "$DATE" --names-out "$OUT_DIR/flagged.txt" 2>&1 | tee "$OUT_DIR/confirm.txt"
RC_CONF=${PIPESTATUS[0]}

# -- 4. explain flagged benchmarks, trends, change points, summary ----------------------------------------
if [ -s "$OUT_DIR/flagged.txt" ] && compgen -G "$OUT_DIR/records/attempt2-*.json" > /dev/null; then
  while IFS= read -r name; do
    fluxperf explain --benchmark "$name" --baseline-dir "$BASELINE_DIR/kernels" \
      --current-json "$OUT_DIR"/records/attempt2-*.json --out "$OUT_DIR/explain" >/dev/null 2>>"$OUT_DIR/nightly.log" \
      || NOTES+=("no kernel diff for $name (no baseline kernel table or no profiled re-run; see nightly.log)")
  done < "$OUT_DIR/flagged.txt"
fi
[ -s "$HISTORY" ] && fluxperf history plot --out "$OUT_DIR/plots" >/dev/null 2>>"$OUT_DIR/nightly.log"
[ -s "$HISTORY" ] && fluxperf history changepoints --json "$OUT_DIR/changepoints.json" 2>&1 | tee -a "$OUT_DIR/nightly.log"
[ "$HISTORY" != "$OUT_DIR/history.jsonl" ] && [ -s "$HISTORY" ] && cp "$HISTORY" "$OUT_DIR/history.jsonl"

STATUS=0
if [ "$RC_NUM" != 0 ]; then STATUS=1
elif [ "$RC_CONF" = 1 ] || { [ "$RC_PERF1" = 10 ] && [ "$RC_PERF2" = 10 ]; }; then STATUS=10
elif [ "$RC_PERF2" != - ] && [ "$RC_PERF2" != 0 ] && [ "$RC_PERF2" != 10 ]; then STATUS=$RC_PERF2
elif [ "$RC_PERF2" = - ] && [ "$RC_PERF1" != 0 ]; then STATUS=$RC_PERF1
fi
[ "$RC_CONF" = 3 ] && NOTES+=("a regression is pending confirmation by the next nightly")
NOTE_ARGS=(); for n in "${NOTES[@]}"; do NOTE_ARGS+=(--note "$n"); done
NOTE_ARGS+=(--note "nightly exit status $STATUS")
fluxperf nightly summary --date "$DATE" --tier "numerics=$RC_NUM" --tier "perf=$RC_PERF1" --tier "perf re-run=$RC_PERF2" \
  --explain-dir "$OUT_DIR/explain" --plots-dir "$OUT_DIR/plots" "${NOTE_ARGS[@]}" --out "$OUT_DIR/summary.md" \
  2>&1 | tee -a "$OUT_DIR/nightly.log"
log "exit status $STATUS (numerics $RC_NUM, perf $RC_PERF1, re-run $RC_PERF2, confirm $RC_CONF); summary: $OUT_DIR/summary.md"

if [ "${NIGHTLY_BUNDLE:-0}" = 1 ]; then  # keep summary.md + one tarball (the device tool returns few files)
  BUNDLE=$(mktemp /tmp/nightly.XXXXXX.tar.gz)
  tar -czf "$BUNDLE" -C "$OUT_DIR" . && find "$OUT_DIR" -mindepth 1 -maxdepth 1 ! -name summary.md -exec rm -rf {} + \
    && mv "$BUNDLE" "$OUT_DIR/nightly.tar.gz"
fi
exit "$STATUS"
