#!/usr/bin/env bash
# GPU numerics tier, as one command (device tool or self-hosted runner):
#   bash scripts/tiers/gpu-tier.sh [extra pytest args]          e.g.  -k "float8"
# Installs carried wheels from .whl/ if present, prints the environment fingerprint, runs `pytest -m gpu` without
# the benchmarks, and writes JUnit XML, the log and measured numerics to $OUT (default ./fluxperf-out).
# FLUXPERF_NUMERICS_RECORD is implied: numerics-measured.json is always written (thresholds are derived from it).
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/tiers/device-env.sh || exit 1
start=$(date +%s)
echo "gpu-tier: LD_PRELOAD=${LD_PRELOAD:-unset} (AOTInductor packages; scripts/tiers/aoti-preload.sh)" | tee "$OUT/gpu-tier.log"
python3 - <<'PY' 2>&1 | tee "$OUT/gpu-tier-fingerprint.json"
import json
from fluxperf.env import fingerprint
print(json.dumps(fingerprint(with_gpu=True), indent=1))
PY
python3 -m pytest -m "gpu and not perf" -p no:cacheprovider -rs --durations=15 \
  --junitxml="$OUT/gpu-tier-junit.xml" "$@" 2>&1 | tee -a "$OUT/gpu-tier.log"
rc=${PIPESTATUS[0]}
echo "gpu-tier: pytest exit status $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu-tier.log"
exit "$rc"
