"""One transformer forward (a denoising step) per ladder rung, full-size FLUX.1-schnell at 1024x1024, batch 1.

Each benchmark stores: per-round CUDA-event samples (median, IQR), TFLOP/s and MFU against the measured bf16
GEMM peak, cold and warm compile seconds, peak memory, kernels per step, graph breaks and recompiles.
Groups (--perf-group): see fluxperf.bench.pytest_plugin.GROUPS and perf/README.md.
"""

from __future__ import annotations

import pytest

# rung -> perf-tier group (each group runs cold in under 9 minutes on one H100)
RUNG_GROUPS = {
    "bf16": "base",
    "compile": "compile",
    "fused_qkv": "compile",
    "channels_last": "attention",
    "fa3_fp8": "attention",
    "float8": "float8",
    "flags": "flags",
    "export": "export",
}
_EXTRA_MARKS = {"fa3_fp8": [pytest.mark.fa3], "float8": [pytest.mark.torchao],
                "flags": [pytest.mark.fa3, pytest.mark.torchao], "export": [pytest.mark.fa3, pytest.mark.torchao,
                                                                             pytest.mark.export]}


def _params():
    return [pytest.param(name, id=name, marks=[pytest.mark.perf_group(group), *_EXTRA_MARKS.get(name, [])])
            for name, group in RUNG_GROUPS.items()]


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("rung_name", _params())
def test_transformer_step(perf, rung_name):
    extra = perf.transformer_step(rung_name)
    assert extra["rounds"] >= 10
    assert extra["metrics"]["tflops"] > 0
    assert 0 < extra["metrics"]["mfu"] < 1.5, "MFU against the measured bf16 GEMM peak (fp8 rungs may exceed 1)"
