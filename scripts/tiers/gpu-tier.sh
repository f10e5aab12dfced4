#!/usr/bin/env bash
# GPU numerics tier, as one command (device tool or self-hosted runner):
#   bash scripts/tiers/gpu-tier.sh [--gpus N] [extra pytest args]          e.g.  -k "float8"
# Installs carried wheels from .whl/ if present, prints the environment fingerprint, runs `pytest -m gpu` without
# the benchmarks, and writes JUnit XML, the log and measured numerics to $OUT (default ./fluxperf-out).
# FLUXPERF_NUMERICS_RECORD is implied: numerics-measured.json is always written (thresholds are derived from it).
#
# --gpus N (2..8): one worker per GPU. Shard i (pytest --shard i/N, fluxperf/bench/shard.py: whole test modules,
# balanced by test count) runs with CUDA_VISIBLE_DEVICES=<i-th visible GPU> on the i-th slice of the cores
# (taskset), all N at once, each into $OUT/shard<i>/ (log, JUnit, fingerprint, numerics-measured.json); then the
# tests that span several GPUs (--shard all-gpus: tests/gpu/test_parallel_gpu.py) run with all N GPUs into
# $OUT/all-gpus/. Afterwards $OUT/gpu-tier.log holds every part's log, $OUT/numerics-measured.json the union of the
# parts' records, and the exit status is the most severe of the parts' (python -m fluxperf.bench.shard worst:
# pytest's own first, then the judge's 12 > 10 > 14 > 13 > 11). A part that selects nothing exits 14.
# FLUXPERF_TIER_PYTEST (tests of this script): a stand-in for `python3 -m pytest`; the GPU count is not checked.
set -uo pipefail
cd "$(dirname "$0")/../.."
GPUS=1; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) GPUS="${2-}"; shift $(( $# > 1 ? 2 : 1 )) ;;
    --gpus=*) GPUS="${1#--gpus=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
case "$GPUS" in [1-8]) ;; *) echo "gpu-tier: --gpus '$GPUS': the number of GPUs to shard over, 1 to 8. Fix: e.g. --gpus 2" >&2; exit 2 ;; esac
read -ra PYTEST <<< "${FLUXPERF_TIER_PYTEST:-python3 -m pytest}"
source scripts/tiers/device-env.sh || exit 1
if [ "$GPUS" -gt 1 ] && [ -z "${FLUXPERF_TIER_PYTEST:-}" ]; then
  python3 -m fluxperf.bench.shard gpus "$GPUS" || exit 2
fi
start=$(date +%s)
PYTEST_ARGS=(-m "gpu and not perf" -p no:cacheprovider -rs --durations=15)

fingerprint() {
  python3 - <<'PY'
import json
from fluxperf.env import fingerprint
print(json.dumps(fingerprint(with_gpu=True), indent=1))
PY
}

if [ "$GPUS" = 1 ]; then
  echo "gpu-tier: LD_PRELOAD=${LD_PRELOAD:-unset} (AOTInductor packages; scripts/tiers/aoti-preload.sh)" | tee "$OUT/gpu-tier.log"
  fingerprint 2>&1 | tee "$OUT/gpu-tier-fingerprint.json"
  "${PYTEST[@]}" "${PYTEST_ARGS[@]}" --junitxml="$OUT/gpu-tier-junit.xml" "${ARGS[@]}" 2>&1 | tee -a "$OUT/gpu-tier.log"
  rc=${PIPESTATUS[0]}
  echo "gpu-tier: pytest exit status $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu-tier.log"
  exit "$rc"
fi

# the GPUs this tier may use: the caller's CUDA_VISIBLE_DEVICES entries, else 0..N-1
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then IFS=, read -ra DEVICES <<< "$CUDA_VISIBLE_DEVICES"; else DEVICES=($(seq 0 7)); fi
if [ "${#DEVICES[@]}" -lt "$GPUS" ]; then
  echo "gpu-tier: --gpus $GPUS but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES names ${#DEVICES[@]}. Fix: --gpus ${#DEVICES[@]} or widen it" >&2; exit 2
fi
NCPU=$(nproc); PIN=1; command -v taskset > /dev/null || PIN=0

part() {  # part DIR DEVICES CPUS PYTEST_ARGS...: one worker, its outputs in DIR, its exit status in DIR/status
  local dir=$1 devices=$2 cpus=$3; shift 3
  local pin=(); [ "$PIN" = 1 ] && [ -n "$cpus" ] && pin=(taskset -c "$cpus")
  mkdir -p "$dir"
  (
    export CUDA_VISIBLE_DEVICES="$devices" OUT="$dir"
    unset FLUXPERF_GPU_COUNT  # numerics thresholds are per GPU model
    p0=$(date +%s)
    echo "gpu-tier part $(basename "$dir"): CUDA_VISIBLE_DEVICES=$devices cores ${cpus:-all}$([ "$PIN" = 1 ] || echo ' (taskset not found: not pinned)')"
    fingerprint > "$dir/gpu-tier-fingerprint.json" 2>&1
    "${pin[@]}" "${PYTEST[@]}" "${PYTEST_ARGS[@]}" --junitxml="$dir/gpu-tier-junit.xml" "$@"
    rc=$?
    echo "gpu-tier part $(basename "$dir"): pytest exit status $rc after $(( $(date +%s) - p0 )) s"
    echo "$rc" > "$dir/status"
  ) > "$dir/gpu-tier.log" 2>&1
}

echo "gpu-tier: --gpus $GPUS: $GPUS shards at once, then the all-GPU tests; LD_PRELOAD=${LD_PRELOAD:-unset}" | tee "$OUT/gpu-tier.log"
PARTS=()
for i in $(seq 0 $((GPUS - 1))); do
  PARTS+=("$OUT/shard$i")
  part "$OUT/shard$i" "${DEVICES[$i]}" "$((i * NCPU / GPUS))-$(((i + 1) * NCPU / GPUS - 1))" --shard "$i/$GPUS" "${ARGS[@]}" &
done
wait
echo "gpu-tier: shards done after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu-tier.log"
ALL=$(IFS=,; echo "${DEVICES[*]:0:$GPUS}")
PARTS+=("$OUT/all-gpus")
part "$OUT/all-gpus" "$ALL" "" --shard all-gpus "${ARGS[@]}"

STATUSES=()
for dir in "${PARTS[@]}"; do
  { echo "===== $(basename "$dir") ====="; cat "$dir/gpu-tier.log"; } >> "$OUT/gpu-tier.log"
  STATUSES+=("$(cat "$dir/status" 2>/dev/null || echo 3)")  # no status file: the part died (internal error)
done
# one numerics-measured.json (and parallel-numerics.json) for `fluxperf baseline numerics`: the parts' union
python3 - "$OUT" "${PARTS[@]}" <<'PY' 2>&1 | tee -a "$OUT/gpu-tier.log"
import json, sys
from pathlib import Path
from fluxperf.io import atomic_write_json
out, parts = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
for name in ("numerics-measured.json", "parallel-numerics.json"):
    merged, seen = {}, {}
    for part in parts:
        path = part / name
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                if key in merged:
                    print(f"gpu-tier: {name}: {key!r} measured in both {seen[key]} and {part.name}: the merged file "
                          f"keeps {seen[key]}'s; each part's own file is in its directory")
                    continue
                merged[key], seen[key] = value, part.name
    if merged:
        atomic_write_json(out / name, merged)
        print(f"gpu-tier: {out / name}: {len(merged)} entries from {sorted(set(seen.values()))}")
PY
rc=$(python3 -m fluxperf.bench.shard worst "${STATUSES[@]}") || rc=2
echo "gpu-tier: part statuses [${STATUSES[*]}] (shard0..$((GPUS - 1)), all-gpus) -> exit status $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu-tier.log"
exit "$rc"
