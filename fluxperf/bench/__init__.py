"""GPU benchmarks against per-hardware baselines: measure, watch the GPU, decide, report.

Modules (each one idea; none imports torch, CUDA or pytest at import time):
    stats        the decision rule: Mann-Whitney U on per-round samples AND a minimum effect size
    monitor      NVML sampling thread (temperature, SM clock, power, clock-event reasons) + throttle verdict
    calibration  fixed kernel set (bf16 GEMM, fp8 GEMM, device copy) that measures the machine's speed
    flops        FLOP count of a FLUX transformer step; TFLOP/s and MFU
    baseline     baselines/<gpu-slug>/0001_baseline.json: load, validate, atomic update, provenance
    compare      current vs baseline: raw and calibration-normalized timings, metrics and proxies
    report       pandas table -> markdown, CSV and a PNG chart of the ladder
    fakes        fabricated run JSONs and NVML readers for CPU tests
    slowdown     test-only slowdown injection (FLUXPERF_INJECT_SLOWDOWN) for the regression demo
    harness      GPU-side measurement used by perf/ (CUDA-event timer for pytest-benchmark)
    pytest_plugin  machine info, per-GPU storage, verdict collection and exit statuses

Exit statuses of `pytest -m gpu --benchmark-compare` (pytest's own 1-5 keep their meaning and come first;
these replace 0): EXIT_REGRESSION 10, EXIT_INCONCLUSIVE 11, EXIT_BASELINE_ERROR 12 (corrupt or foreign baseline).
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_REGRESSION = 10
EXIT_INCONCLUSIVE = 11
EXIT_BASELINE_ERROR = 12

__all__ = ["EXIT_PASS", "EXIT_REGRESSION", "EXIT_INCONCLUSIVE", "EXIT_BASELINE_ERROR"]
