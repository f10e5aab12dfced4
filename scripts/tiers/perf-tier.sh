#!/usr/bin/env bash
# Run the GPU perf tier (perf/), one group or all, and optionally compare with or create the baseline.
#
#   scripts/tiers/perf-tier.sh GROUP[,GROUP...]|all [--compare] [--baseline] [--repeat N] [--gpus N] [-- PYTEST_ARGS...]
#
#   GROUP       base | compile | attention | float8 | flags | export | e2e_compile | e2e_full | dev_cache |
#               kontext | parallel | ... | all   (fluxperf.bench.pytest_plugin.GROUPS is the list)
#   --compare   compare with baselines/<this GPU>/ (pytest --benchmark-compare): exit 0 pass, 10 regression,
#               11 inconclusive, 12 baseline error (corrupt / other GPU)
#   --baseline  record kernel tables, then `fluxperf baseline update` the runs into baselines/<this GPU>/
#   --repeat N  run each group N times (repeated same-code runs set the noise thresholds of a new baseline)
#   -- ARGS     passed to pytest, e.g. -- --benchmark-compare-fail=median:5%
#   --gpus N    one worker per GPU (N = 1..8, default 1): the per-GPU groups are split over N shards, whole groups
#               balanced by their cold times (python -m fluxperf.bench.shard groups: GROUP_COLD_S); shard i runs its
#               groups one after another with CUDA_VISIBLE_DEVICES=<i-th visible GPU> on the i-th slice of the
#               cores (taskset), all shards at once; then the groups spanning several GPUs (parallel: 2) run with
#               those GPUs and FLUXPERF_GPU_COUNT=<span> (baselines/<gpu>x2/). With --gpus 1 `all` leaves the
#               multi-GPU groups out (said in the log) and naming one is refused. The exit status is the most
#               severe of the runs' (python -m fluxperf.bench.shard worst; judge's severity, pytest's own first).
#   FLUXPERF_TIER_PYTEST (tests of this script): a stand-in for `python3 -m pytest`; the GPU count is not checked.
#
# Outputs go to $OUT when set (the device tool brings back at most 8 files, so details are packed):
#   perf-<name>.log  full log     <name>.json  last benchmark JSON     report.md  current vs baseline table
#   perf-<name>.tar.gz  every JSON, JUnit XML, report (md/csv/png) and, with --baseline, baselines/<slug>/
# Without $OUT they stay in fluxperf-out/perf-<name>-<time>/.
# The export rung keeps its AOTInductor packages (and their build's inductor cache) in $FLUXPERF_EXPORT_PACKAGES,
# default fluxperf-out/export-packages: the first run on a machine builds them cold (compile_cold_s recorded), later
# runs load them (no compile_cold_s; the package's build_s is in the AppliedStack); max-autotune compiles
# (compile_faithful) keep their inductor cache there too, one directory per rung (fluxperf/bench/build_cache.py), so a
# build stopped by a time limit resumes (that run records no compile_cold_s). The package key covers torch,
# GPU, shapes, recipe and the traced code, so a stale package is never reused. FLUXPERF_EXPORT_PACKAGES= (empty)
# builds cold every time.
# Carried wheels in .whl/ (see docs: DEVICE.md) are installed into /tmp/site first (scripts/tiers/device-env.sh, which also
# preloads the system libstdc++ for AOTInductor packages).
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 2
GROUPS_ALL=$(PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 -c \
  "from fluxperf.bench.pytest_plugin import GROUPS; print(' '.join(GROUPS))") \
  || { echo "perf-tier: cannot read the group list from fluxperf.bench.pytest_plugin.GROUPS" >&2; exit 2; }
usage() { sed -n '2,30p' "$0"; exit 2; }

[ $# -ge 1 ] || usage
NAME="$1"; shift
COMPARE=0; BASELINE=0; REPEAT=1; GPUS=1; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --compare) COMPARE=1 ;;
    --baseline) BASELINE=1 ;;
    --repeat) REPEAT="${2:?--repeat needs a number}"; shift ;;
    --gpus) GPUS="${2-}"; [ $# -gt 1 ] && shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
  shift
done
case "$GPUS" in [1-8]) ;; *) echo "perf-tier: --gpus '$GPUS': the number of GPUs to shard over, 1 to 8. Fix: e.g. --gpus 2" >&2; exit 2 ;; esac
if [ "$NAME" = all ]; then SELECTED="$GROUPS_ALL"; else SELECTED="${NAME//,/ }"; fi
for g in $SELECTED; do
  case " $GROUPS_ALL " in *" $g "*) ;; *) echo "unknown group '$g'; use one of: $GROUPS_ALL all" >&2; exit 2 ;; esac
done
read -ra PYTEST <<< "${FLUXPERF_TIER_PYTEST:-python3 -m pytest}"
# the shard plan: "<i> <groups>" per GPU, then "all-gpus <groups spanning several GPUs>"
PLAN=$(PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 -m fluxperf.bench.shard groups "$GPUS" $SELECTED) || exit 2
MULTI=$(sed -n 's/^all-gpus *//p' <<< "$PLAN")
LEFT_OUT=""
if [ -n "$MULTI" ] && [ "$GPUS" = 1 ]; then
  if [ "$NAME" != all ]; then
    echo "perf-tier: group(s) [$MULTI] span several GPUs (one process per GPU). Fix: scripts/tiers/perf-tier.sh $NAME --gpus 2" >&2; exit 2
  fi
  LEFT_OUT="$MULTI"; MULTI=""
fi

# carried wheels, PYTHONPATH and the libstdc++ preload as every device script; device-env.sh also defaults OUT,
# but here an unset OUT means "keep results in fluxperf-out/perf-<name>-<time>/", so it is restored
[ -n "${OUT+set}" ] && OUT_GIVEN=1 || OUT_GIVEN=0
source scripts/tiers/device-env.sh || { echo "perf-tier: scripts/tiers/device-env.sh failed" >&2; exit 2; }
[ "$OUT_GIVEN" = 1 ] || unset OUT

export FLUXPERF_EXPORT_PACKAGES="${FLUXPERF_EXPORT_PACKAGES-$PWD/fluxperf-out/export-packages}"

STAMP="$(date -u +%Y%m%dT%H%M%S)"
if [ -n "${OUT:-}" ]; then WORK="$(mktemp -d)"; else WORK="fluxperf-out/perf-$NAME-$STAMP"; fi
mkdir -p "$WORK"
LOG="$WORK/perf-$NAME.log"
: > "$LOG"
log() { echo "$*" | tee -a "$LOG"; }

log "perf tier: groups [$SELECTED] repeat=$REPEAT compare=$COMPARE baseline=$BASELINE slowdown=${FLUXPERF_INJECT_SLOWDOWN:-none}"
log "perf tier: LD_PRELOAD=${LD_PRELOAD:-unset} (AOTInductor packages; scripts/tiers/aoti-preload.sh)"
log "perf tier: export packages kept in ${FLUXPERF_EXPORT_PACKAGES:-(none: cold build)}"
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import torch; from fluxperf.env import versions
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("versions", versions())
EOF

# one group (REPEAT times) into $WORK; each run's exit status appended to the file $1
run_group() {
  local statuses=$1 g=$2 i tag rc t0 args
  for i in $(seq 1 "$REPEAT"); do
    tag="$g"; [ "$REPEAT" -gt 1 ] && tag="$g-$i"
    args=(perf -m gpu --perf-group "$g" -v -rs --benchmark-json="$WORK/$tag.json" --junitxml="$WORK/$tag.junit.xml"
          --fluxperf-report "$WORK/report-$tag")
    [ "$COMPARE" = 1 ] && args+=(--benchmark-compare)
    [ "$BASELINE" = 1 ] && args+=(--fluxperf-kernel-tables)
    echo "=== group $tag: CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} FLUXPERF_GPU_COUNT=${FLUXPERF_GPU_COUNT:-1} ${PYTEST[*]} ${args[*]} ${EXTRA[*]:-}"
    t0=$SECONDS
    "${PYTEST[@]}" "${args[@]}" "${EXTRA[@]}" 2>&1
    rc=$?
    echo "=== group $tag: exit $rc after $((SECONDS - t0)) s"
    echo "$rc" >> "$statuses"
  done
}

in_order() {  # the groups of $1 in the order of $SELECTED (GROUPS' order for `all`)
  local g out=""
  for g in $SELECTED; do case " $1 " in *" $g "*) out="$out $g" ;; esac; done
  echo $out
}

[ -n "$LEFT_OUT" ] && log "perf tier: groups [$LEFT_OUT] left out of 'all': they span several GPUs (run with --gpus 2)"
if [ "$GPUS" = 1 ]; then
  for g in $(in_order "$(sed -n 's/^0 *//p' <<< "$PLAN")"); do run_group "$WORK/statuses" "$g" 2>&1 | tee -a "$LOG"; done
else
  if [ -z "${FLUXPERF_TIER_PYTEST:-}" ]; then python3 -m fluxperf.bench.shard gpus "$GPUS" 2>&1 | tee -a "$LOG"; [ "${PIPESTATUS[0]}" = 0 ] || exit 2; fi
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then IFS=, read -ra DEVICES <<< "$CUDA_VISIBLE_DEVICES"; else DEVICES=($(seq 0 7)); fi
  [ "${#DEVICES[@]}" -ge "$GPUS" ] || { log "perf-tier: --gpus $GPUS but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES names ${#DEVICES[@]}"; exit 2; }
  NCPU=$(nproc); command -v taskset > /dev/null || log "perf tier: taskset not found: shards not pinned to cores"
  log "perf tier: --gpus $GPUS plan: $(tr '\n' ';' <<< "$PLAN")"
  t0=$SECONDS
  for i in $(seq 0 $((GPUS - 1))); do
    groups=$(in_order "$(sed -n "s/^$i *//p" <<< "$PLAN")")
    [ -n "$groups" ] || continue
    cpus="$((i * NCPU / GPUS))-$(((i + 1) * NCPU / GPUS - 1))"
    (
      export CUDA_VISIBLE_DEVICES="${DEVICES[$i]}"; unset FLUXPERF_GPU_COUNT
      echo "perf tier shard $i/$GPUS: groups [$groups] on GPU ${DEVICES[$i]}, cores $cpus"
      # pin this subshell: every process it starts inherits the core slice
      command -v taskset > /dev/null && taskset -cp "$cpus" "$BASHPID" > /dev/null
      for g in $groups; do run_group "$WORK/statuses.$i" "$g"; done
    ) > "$WORK/perf-$NAME-gpu$i.log" 2>&1 &
  done
  wait
  for i in $(seq 0 $((GPUS - 1))); do
    if [ -f "$WORK/perf-$NAME-gpu$i.log" ]; then
      { echo "===== shard $i/$GPUS ====="; cat "$WORK/perf-$NAME-gpu$i.log"; } >> "$LOG"
      cat "$WORK/statuses.$i" >> "$WORK/statuses" 2>/dev/null || echo 3 >> "$WORK/statuses"
    fi
  done
  log "perf tier: shards done after $((SECONDS - t0)) s"
  for g in $MULTI; do
    span=$(python3 -m fluxperf.bench.shard span "$g") || exit 2
    ( export CUDA_VISIBLE_DEVICES="$(IFS=,; echo "${DEVICES[*]:0:$span}")" FLUXPERF_GPU_COUNT="$span"
      run_group "$WORK/statuses" "$g" ) 2>&1 | tee -a "$LOG"
  done
fi

STATUSES=($(cat "$WORK/statuses" 2>/dev/null)); JSONS=()
for g in $SELECTED; do
  for i in $(seq 1 "$REPEAT"); do
    tag="$g"; [ "$REPEAT" -gt 1 ] && tag="$g-$i"
    [ -s "$WORK/$tag.json" ] && JSONS+=("$WORK/$tag.json")
  done
done

# the most severe status: pytest's own first, then the judge's severity (12 > 10 > 14 > 13 > 11), 15, 0
FINAL=$(python3 -m fluxperf.bench.shard worst "${STATUSES[@]}") || FINAL=2
[ ${#STATUSES[@]} -gt 0 ] || { log "perf tier: no group ran"; FINAL=14; }

if [ "$BASELINE" = 1 ]; then
  if [ "$FINAL" != 0 ] || [ ${#JSONS[@]} = 0 ]; then
    log "not updating the baseline: the runs did not all pass (exit $FINAL) or produced no JSON"
    [ "$FINAL" = 0 ] && FINAL=1
  else
    # one update per GPU slug: with --gpus the parallel group's runs belong to baselines/<gpu>x2/
    while read -r slug files; do
      log "perf tier: fluxperf baseline update ($slug): $files"
      python3 -m fluxperf baseline update $files < /dev/null 2>&1 | tee -a "$LOG"
      urc=${PIPESTATUS[0]}
      [ "$urc" != 0 ] && FINAL=$urc
      [ -d "baselines/$slug" ] && mkdir -p "$WORK/baselines" && cp -r "baselines/$slug" "$WORK/baselines/"
    done < <(python3 - "${JSONS[@]}" <<'PY'
import json, sys
by_slug = {}
for path in sys.argv[1:]:
    by_slug.setdefault(json.load(open(path))["machine_info"]["fluxperf"]["slug"], []).append(path)
for slug, paths in by_slug.items():
    print(slug, *paths)
PY
)
  fi
fi
log "perf tier [$NAME]: exit $FINAL (0 pass, 10 regression, 11 inconclusive, 12 baseline error, other: pytest)"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$LOG" "$OUT/"
  [ ${#JSONS[@]} -gt 0 ] && cp "${JSONS[-1]}" "$OUT/$NAME.json"
  if compgen -G "$WORK/report-*/report.md" > /dev/null; then cat "$WORK"/report-*/report.md > "$OUT/report.md"; fi
  # one GPU slug: $OUT/0001_baseline.json; several (--gpus with parallel): $OUT/<slug>-0001_baseline.json each
  kept=("$WORK"/baselines/*/0001_baseline.json)
  if [ -f "${kept[0]}" ] && [ ${#kept[@]} = 1 ]; then cp "${kept[0]}" "$OUT/"
  elif [ -f "${kept[0]}" ]; then for b in "${kept[@]}"; do cp "$b" "$OUT/$(basename "$(dirname "$b")")-0001_baseline.json"; done; fi
  tar -czf "$OUT/perf-$NAME.tar.gz" -C "$WORK" .
  echo "results in $OUT"
else
  echo "results in $WORK"
fi
exit "$FINAL"
