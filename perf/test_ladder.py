"""One transformer forward (a denoising step) per ladder rung, full-size FLUX.1-schnell at 1024x1024, batch 1.

Each benchmark stores: per-round CUDA-event samples (median, IQR), TFLOP/s and MFU against the measured bf16
GEMM peak, cold and warm compile seconds, peak memory, kernels per step, graph breaks and recompiles.
Groups (--perf-group): see fluxperf.bench.pytest_plugin.GROUPS and perf/README.md.
"""

from __future__ import annotations

import pytest
from root_conftest import recipe_marks

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
    # the FLUX.1-dev A100/H100 experiment table's step rungs (inputs in the rung's dtype: perf/conftest.py)
    "fp16": "experiment",
    "fa2": "experiment",
    "int8": "experiment",
    "compile_int8": "experiment",
    # flux-fast's deployed compile (whole model, max-autotune without CUDA graphs, fullgraph) on the flags stack:
    # compare with step[flags] (the same stack compiled regionally, default mode) for compile and step time
    "compile_faithful": "compile_faithful",
    # issue 17's float8 levers against their reference, in one group (one GPU command measures all three)
    "float8_only": "speed",
    "float8_only_row": "speed",
    "float8_static": "speed",
    "float8_autotune": "speed",
    "float8_graph": "speed",
}


def _params():
    """One param per rung, marked with its perf group and what the rung needs (fa3, torchao, gpu, export...)."""
    return [pytest.param(name, id=name, marks=[pytest.mark.perf_group(group), *recipe_marks(name)[0]])
            for name, group in RUNG_GROUPS.items()]


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("rung_name", _params())
def test_transformer_step(perf, rung_name):
    extra = perf.transformer_step(rung_name)
    assert extra["rounds"] >= 10
    assert extra["metrics"]["tflops"] > 0
    assert 0 < extra["metrics"]["mfu"] < 1.5, "MFU against the measured bf16 GEMM peak (fp8 rungs may exceed 1)"
