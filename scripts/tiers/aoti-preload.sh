# Sourced, not run (scripts/tiers/device-env.sh sources it; any other script may: `source scripts/tiers/aoti-preload.sh`).
# Preloads the system libstdc++ so that AOTInductor packages whose wrapper.so carries its own copy of libstdc++
# load instead of segfaulting in std::regex (../shared/DEVICE.md; fluxperf/steps/export/loader.py refuses such a load
# without it). LD_PRELOAD only works when set before Python starts, hence in the shell. Nothing is changed when a
# libstdc++ is already preloaded, when the system has none, when `import torch` fails with it (e.g. a conda torch
# that needs a newer libstdc++ than the system's), or when FLUXPERF_NO_PRELOAD=1.
fluxperf_preload_libstdcxx() {
  local py="${PYTHON:-python3}" lib
  [ "${FLUXPERF_NO_PRELOAD:-0}" = 1 ] && return 0
  case "${LD_PRELOAD:-}" in *libstdc++*) return 0 ;; esac
  lib=$(PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$py" -m fluxperf.steps.export.loader system-lib 2>/dev/null) || return 0
  if LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" "$py" -c 'import torch' > /dev/null 2>&1; then
    export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
    echo "aoti-preload: LD_PRELOAD=$LD_PRELOAD (AOTInductor packages that carry their own libstdc++ need it)" >&2
  else
    echo "aoti-preload: not preloading $lib: '$py -c \"import torch\"' fails with it" >&2
  fi
}
fluxperf_preload_libstdcxx
