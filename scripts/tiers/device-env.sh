# Source this at the start of a device (or self-hosted runner) command: installs carried wheels from .whl/
# (see ../shared/DEVICE.md) into /tmp/site without network, puts the repo on PYTHONPATH, and preloads the system
# libstdc++ for AOTInductor packages (scripts/tiers/aoti-preload.sh). Sets OUT (default ./fluxperf-out) and creates it.
# Usage: source scripts/tiers/device-env.sh
if compgen -G ".whl/*.whl" > /dev/null; then
  # Install once per machine: a stamp holds the wheel listing, so chained scripts do not reinstall.
  stamp=/tmp/site/.fluxperf-wheels
  if [ "$(cat "$stamp" 2>/dev/null)" != "$(ls .whl/*.whl)" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device-env: installing carried wheels from .whl/ failed" >&2; return 1; }
  ls .whl/*.whl > "$stamp"
  fi
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
source "$(dirname "${BASH_SOURCE[0]}")/aoti-preload.sh"
export OUT="${OUT:-$PWD/fluxperf-out}"
mkdir -p "$OUT"
