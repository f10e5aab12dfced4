"""GPU benchmarks against per-hardware baselines: measure, watch the GPU, decide, report.

Modules (each one idea; none imports torch, CUDA or pytest at import time):
    stats        the decision rule: Mann-Whitney U on per-round samples AND a minimum effect size
    monitor      NVML sampling thread (temperature, SM clock, power, clock-event reasons) + throttle verdict
    calibration  fixed kernel set (bf16 GEMM, fp8 GEMM, device copy) that measures the machine's speed
    flops        FLOP count of a FLUX transformer step; TFLOP/s and MFU
    baseline     baselines/<gpu-slug>/0001_baseline.json: paths, GPU identity, loading (validated)
    compare      current vs baseline: raw and calibration-normalized timings, metrics and proxies
    report       pandas table -> markdown, CSV and a PNG chart of the ladder
    fakes        fabricated run JSONs and NVML readers for CPU tests
    slowdown     test-only slowdown injection (FLUXPERF_INJECT_SLOWDOWN) for the regression demo
    harness      GPU-side measurement used by perf/ (CUDA-event timer for pytest-benchmark)
    pytest_plugin  machine info, per-GPU storage, verdict collection and exit statuses

    validate     field-by-field validation of baselines, run files, thresholds (every number finite, no booleans)
    judge        the one judge: a run vs the baseline -> Verdict, outcome and exit status (table in judge.py)
    baseline_update  `fluxperf baseline update|remove`: locked, merged, validated, one atomic step
    kernels      per-kernel CUDA time tables (profiler) and their diff (the regression explainer)

Exit statuses (pytest's own 1-5 keep their meaning and come first; these replace 0): 10 regression,
11 inconclusive, 12 baseline error, 13 no baseline, 14 nothing measured (fluxperf.bench.judge.EXIT_STATUS).
"""

from __future__ import annotations

from fluxperf.bench.judge import EXIT_STATUS

EXIT_PASS = EXIT_STATUS["pass"]
EXIT_REGRESSION = EXIT_STATUS["regression"]
EXIT_INCONCLUSIVE = EXIT_STATUS["inconclusive"]
EXIT_BASELINE_ERROR = EXIT_STATUS["baseline_error"]
EXIT_NO_BASELINE = EXIT_STATUS["no_baseline"]
EXIT_NOT_MEASURED = EXIT_STATUS["not_measured"]

__all__ = ["EXIT_PASS", "EXIT_REGRESSION", "EXIT_INCONCLUSIVE", "EXIT_BASELINE_ERROR", "EXIT_NO_BASELINE",
           "EXIT_NOT_MEASURED"]
