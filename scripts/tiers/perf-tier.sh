#!/usr/bin/env bash
# Run the GPU perf tier (perf/), one group or all, and optionally compare with or create the baseline.
#
#   scripts/tiers/perf-tier.sh GROUP|all [--compare] [--baseline] [--repeat N] [-- PYTEST_ARGS...]
#
#   GROUP       base | compile | attention | float8 | flags | export | e2e_compile | e2e_full | dev_cache |
#               kontext | all   (fluxperf.bench.pytest_plugin.GROUPS is the list)
#   --compare   compare with baselines/<this GPU>/ (pytest --benchmark-compare): exit 0 pass, 10 regression,
#               11 inconclusive, 12 baseline error (corrupt / other GPU)
#   --baseline  record kernel tables, then `fluxperf baseline update` the runs into baselines/<this GPU>/
#   --repeat N  run each group N times (repeated same-code runs set the noise thresholds of a new baseline)
#   -- ARGS     passed to pytest, e.g. -- --benchmark-compare-fail=median:5%
#
# Outputs go to $OUT when set (the device tool brings back at most 8 files, so details are packed):
#   perf-<name>.log  full log     <name>.json  last benchmark JSON     report.md  current vs baseline table
#   perf-<name>.tar.gz  every JSON, JUnit XML, report (md/csv/png) and, with --baseline, baselines/<slug>/
# Without $OUT they stay in fluxperf-out/perf-<name>-<time>/.
# The export rung keeps its AOTInductor packages (and their build's inductor cache) in $FLUXPERF_EXPORT_PACKAGES,
# default fluxperf-out/export-packages: the first run on a machine builds them cold (compile_cold_s recorded), later
# runs load them (no compile_cold_s; the package's build_s is in the AppliedStack). The package key covers torch,
# GPU, shapes, recipe and the traced code, so a stale package is never reused. FLUXPERF_EXPORT_PACKAGES= (empty)
# builds cold every time.
# Carried wheels in .whl/ (see docs: DEVICE.md) are installed into /tmp/site first (scripts/tiers/device-env.sh, which also
# preloads the system libstdc++ for AOTInductor packages).
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 2
GROUPS_ALL=$(PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 -c \
  "from fluxperf.bench.pytest_plugin import GROUPS; print(' '.join(GROUPS))") \
  || { echo "perf-tier: cannot read the group list from fluxperf.bench.pytest_plugin.GROUPS" >&2; exit 2; }
usage() { sed -n '2,22p' "$0"; exit 2; }

[ $# -ge 1 ] || usage
NAME="$1"; shift
COMPARE=0; BASELINE=0; REPEAT=1; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --compare) COMPARE=1 ;;
    --baseline) BASELINE=1 ;;
    --repeat) REPEAT="${2:?--repeat needs a number}"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
  shift
done
if [ "$NAME" = all ]; then SELECTED="$GROUPS_ALL"; else SELECTED="$NAME"; fi
for g in $SELECTED; do
  case " $GROUPS_ALL " in *" $g "*) ;; *) echo "unknown group '$g'; use one of: $GROUPS_ALL all" >&2; exit 2 ;; esac
done

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

STATUSES=(); JSONS=()
for g in $SELECTED; do
  for i in $(seq 1 "$REPEAT"); do
    tag="$g"; [ "$REPEAT" -gt 1 ] && tag="$g-$i"
    args=(perf -m gpu --perf-group "$g" -v -rs --benchmark-json="$WORK/$tag.json" --junitxml="$WORK/$tag.junit.xml"
          --fluxperf-report "$WORK/report-$tag")
    [ "$COMPARE" = 1 ] && args+=(--benchmark-compare)
    [ "$BASELINE" = 1 ] && args+=(--fluxperf-kernel-tables)
    log "=== group $tag: python3 -m pytest ${args[*]} ${EXTRA[*]:-}"
    start=$SECONDS
    python3 -m pytest "${args[@]}" "${EXTRA[@]}" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    log "=== group $tag: exit $rc after $((SECONDS - start)) s"
    STATUSES+=("$rc"); [ -s "$WORK/$tag.json" ] && JSONS+=("$WORK/$tag.json")
  done
done

FINAL=0
for rc in "${STATUSES[@]}"; do  # test failures / errors first, then regression (10), then inconclusive (11)
  case "$rc" in 0|10|11) ;; *) FINAL=$rc; break ;; esac
done
if [ "$FINAL" = 0 ]; then
  for rc in "${STATUSES[@]}"; do [ "$rc" = 10 ] && FINAL=10; done
  if [ "$FINAL" = 0 ]; then for rc in "${STATUSES[@]}"; do [ "$rc" = 11 ] && FINAL=11; done; fi
fi

if [ "$BASELINE" = 1 ]; then
  if [ "$FINAL" != 0 ] || [ ${#JSONS[@]} = 0 ]; then
    log "not updating the baseline: the runs did not all pass (exit $FINAL) or produced no JSON"
    [ "$FINAL" = 0 ] && FINAL=1
  else
    python3 -m fluxperf baseline update "${JSONS[@]}" 2>&1 | tee -a "$LOG"
    urc=${PIPESTATUS[0]}
    [ "$urc" != 0 ] && FINAL=$urc
    slug_dir="$(python3 -c 'import json,sys; print("baselines/" + json.load(open(sys.argv[1]))["machine_info"]["fluxperf"]["slug"])' "${JSONS[0]}")"
    [ -d "$slug_dir" ] && mkdir -p "$WORK/baselines" && cp -r "$slug_dir" "$WORK/baselines/"
  fi
fi
log "perf tier [$NAME]: exit $FINAL (0 pass, 10 regression, 11 inconclusive, 12 baseline error, other: pytest)"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$LOG" "$OUT/"
  [ ${#JSONS[@]} -gt 0 ] && cp "${JSONS[-1]}" "$OUT/$NAME.json"
  if compgen -G "$WORK/report-*/report.md" > /dev/null; then cat "$WORK"/report-*/report.md > "$OUT/report.md"; fi
  if compgen -G "$WORK/baselines/*/0001_baseline.json" > /dev/null; then cp "$WORK"/baselines/*/0001_baseline.json "$OUT/"; fi
  tar -czf "$OUT/perf-$NAME.tar.gz" -C "$WORK" .
  echo "results in $OUT"
else
  echo "results in $WORK"
fi
exit "$FINAL"
