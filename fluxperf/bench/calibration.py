"""A fixed calibration kernel set that measures how fast *this machine* is, independent of our code.

Two "NVIDIA H100 80GB HBM3" ran the same compiled step at ~131 and ~139 ms (shared/DEVICE.md). Timing a
fixed set of kernels in the same run, before AND after each benchmark, lets a comparison divide out the
machine's speed: `speed_factor(current, baseline)` is the geometric mean over kernels of
current_ms / baseline_ms (1.06 = this machine runs the calibration 6% slower), and normalized samples are
samples / factor. A large before/after difference means the machine changed while we measured.

Kernels: bf16 GEMM 8192^3 (tensor cores, power-bound like the transformer step), fp8 GEMM 8192^3 via
torch._scaled_mm (sm89+), and a 1 GiB device-to-device copy (HBM bandwidth).

Example:
    >>> base = {"bf16_gemm": {"ms": 1.40}, "copy": {"ms": 0.70}}
    >>> cur = {"bf16_gemm": {"ms": 1.47}, "copy": {"ms": 0.735}}
    >>> round(speed_factor(cur, base), 3)
    1.05
    >>> [round(x, 1) for x in normalize([105.0, 106.0], 1.05)]
    [100.0, 101.0]
"""

from __future__ import annotations

import math

KERNELS = ("bf16_gemm", "fp8_gemm", "copy")
GEMM_N = 8192
COPY_BYTES = 1 << 30
# Before/after calibration differing by more than this: the machine changed during the benchmark. Measured on a
# healthy H100 (2026-11-22, perf/results/h100-perf-compile): the bf16 GEMM calibration moved 2.6-12.5% between
# before and after a 20-round compiled-step benchmark (power capping warms it up; the copy moved < 1%), while
# the step medians agreed within 3%. A 5% limit made every same-code run inconclusive; a throttled GPU
# (DEVICE.md: 555 MHz, 2.5x slower) is far beyond 15%.
# On the H200 (2026-11-29, perf/results/h200-perf/, first run without HEAT_SOAK_S) the same pattern reached
# 10-17% on the bf16 GEMM (1.41-1.52 ms before, 1.56-1.69 ms after) and 47% once on the fp8 GEMM: the "before"
# calibration ran on a GPU that had idled through model build and compile (boost clocks, 40 C), the "after" one
# at the 700 W power cap after the timed rounds. That is the protocol measuring two machine states, not the
# machine changing: so both calibrations now start with HEAT_SOAK_S of back-to-back GEMMs.
MAX_DRIFT = 0.15
HEAT_SOAK_S = 3.0  # seconds of bf16 GEMMs before timing: the GPU reaches its power-capped steady state


def speed_factor(current: dict, baseline: dict) -> float | None:
    """Geometric mean of current_ms / baseline_ms over the kernels both calibrations timed; None if none shared.

    Args:
        current, baseline: calibration dicts {kernel: {"ms": float, ...}} (see `combine`).
    """
    ratios = [current[k]["ms"] / baseline[k]["ms"] for k in KERNELS
              if k in current and k in baseline and _ok(current[k]) and _ok(baseline[k])]
    if not ratios:
        return None
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def normalize(samples: list[float], factor: float) -> list[float]:
    """Samples as they would be on the baseline's machine: samples / factor."""
    if not (factor and factor > 0 and math.isfinite(factor)):
        raise ValueError(f"factor={factor!r} must be a finite number > 0 (from speed_factor).")
    return [x / factor for x in samples]


def drift(before: dict, after: dict) -> float:
    """Largest relative change of any kernel between two calibrations (0 when nothing comparable)."""
    changes = [abs(after[k]["ms"] / before[k]["ms"] - 1.0) for k in KERNELS
               if k in before and k in after and _ok(before[k]) and _ok(after[k])]
    return max(changes, default=0.0)


def combine(before: dict, after: dict) -> dict:
    """Mean of the before and after timings of each kernel (a kernel timed only once keeps that value)."""
    out = {}
    for k in KERNELS:
        vals = [c[k]["ms"] for c in (before, after) if k in c and _ok(c[k])]
        if vals:
            out[k] = {"ms": sum(vals) / len(vals)}
    return out


def _ok(entry) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("ms"), (int, float)) and entry["ms"] > 0


# -- measuring (GPU) ------------------------------------------------------------------------------------
def run_calibration(device="cuda", *, rounds: int = 7, reps: int = 5, heat_soak_s: float = HEAT_SOAK_S) -> dict:
    """Time the kernel set on `device`; {kernel: {"ms": per-call median, "tflops" or "tbps": rate}}.

    First `heat_soak_s` seconds of back-to-back bf16 GEMMs (not timed) bring the GPU to the power-capped state the
    benchmark itself runs in, so a calibration before a benchmark and one after it measure the same machine state.
    Each round then runs `reps` back-to-back calls (timed with CUDA events) so one round lasts milliseconds.
    Everything allocated here is freed before returning (each kernel's tensors live in its own function).
    """
    import torch

    heat_soak(device, heat_soak_s)
    out = {"bf16_gemm": _bf16_gemm(device, rounds, reps)}
    if torch.cuda.get_device_capability(device) >= (8, 9):
        out["fp8_gemm"] = _fp8_gemm(device, rounds, reps)
    out["copy"] = _copy(device, rounds, reps)
    torch.cuda.empty_cache()
    return out


def heat_soak(device, seconds: float) -> None:
    """Run 8192^3 bf16 GEMMs back to back for about `seconds` (synchronized every 20 GEMMs, ~30 ms)."""
    import time

    import torch

    if seconds <= 0:
        return
    a = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize(device)
    del a


def _bf16_gemm(device, rounds, reps) -> dict:
    import torch

    a = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16)
    b = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16)
    ms = _per_call_ms(lambda: [a @ b for _ in range(reps)], reps, rounds, device)
    return {"ms": ms, "tflops": 2 * GEMM_N**3 / ms / 1e9}


def _fp8_gemm(device, rounds, reps) -> dict:
    import torch

    a = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16).to(torch.float8_e4m3fn)
    # _scaled_mm wants the second operand column-major
    b = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16).to(torch.float8_e4m3fn).t().contiguous().t()
    one = torch.ones((), device=device, dtype=torch.float32)

    def fn():
        return [torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16) for _ in range(reps)]

    ms = _per_call_ms(fn, reps, rounds, device)
    return {"ms": ms, "tflops": 2 * GEMM_N**3 / ms / 1e9}


def _copy(device, rounds, reps) -> dict:
    import torch

    src = torch.empty(COPY_BYTES, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = _per_call_ms(lambda: [dst.copy_(src) for _ in range(reps)], reps, rounds, device)
    return {"ms": ms, "tbps": 2 * COPY_BYTES / ms / 1e9}  # read + write


def _per_call_ms(fn, reps, rounds, device) -> float:
    from fluxperf.bench.timing import time_fn

    return time_fn(fn, warmup=2, rounds=rounds, device=device).median_ms / reps
