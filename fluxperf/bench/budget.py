"""Where a transformer step's time goes: a kernel table grouped into categories, against the FLOPs they do.

The speed work (how far a rung is from the arithmetic floor) starts from this split: GEMMs, attention,
activation quantization, fused Triton elementwise/norm kernels, eager ATen elementwise kernels, copies, and the
part of the step no kernel accounts for (launch gaps and host time). GEMM and attention rows also get the TFLOP/s
they achieve on the step's FLOPs (fluxperf.bench.flops) and, given a rate, the time that rate would take.

Kernel names are matched by the patterns below, on CUDA (cuBLAS/cuBLASLt `nvjet_*`, CUTLASS, cuDNN and FA3 attention,
Inductor's `triton_*`) and on CPU profiles (`aten::*` ops), so the same code explains a stored H100 table and a
CPU smoke run.

Example:
    >>> from fluxperf.bench.kernels import load_kernel_table  # doctest: +SKIP
    >>> table = load_kernel_table("baselines/nvidia-h100-80gb-hbm3/kernels/test_ladder.py-test_transformer_step-compile.csv")  # doctest: +SKIP
    >>> time_budget(table, flops=step_flops(ShapeSpec("schnell", 1024, 1024)), step_ms=131.0)  # doctest: +SKIP
"""

from __future__ import annotations

import re

from fluxperf.bench.flops import StepFlops

GEMM, ATTENTION, QUANTIZE = "gemm", "attention", "quantize (amax/cast)"
FUSED, EAGER, COPY, OTHER, GAPS = ("fused elementwise/norm (triton)", "elementwise/norm (aten)", "copy/memset",
                                   "other", "launch gaps / host (step - kernels)")
# CPU profiles only: dynamo guards, AOT wrappers and Inductor's C++ kernels, which run inline in the compiled
# graph's call and so have no op of their own
HOST = "compiled-graph bodies / framework (CPU profile)"
CATEGORIES = (GEMM, ATTENTION, QUANTIZE, FUSED, EAGER, COPY, HOST, OTHER)
COLUMNS = ("category", "ms", "share", "launches", "tflops", "ms_at_rate")

# Order matters: an Inductor kernel that fused the cast next to attention is named after the ops it fused
# ("triton_..._scaled_dot_product_cudnn_attention_..."), so triton kernels are classified before the libraries.
_QUANT_TRITON = re.compile(r"amax|abs_max|float8|fp8|e4m3|reciprocal.*clamp|clamp.*reciprocal")
_GEMM = re.compile(r"nvjet|gemm|cutlass|cublas|xmma|splitkreduce|aten::(mm|addmm|bmm|baddbmm|matmul|linear|_scaled_mm)\b",
                   re.IGNORECASE)
_ATTENTION = re.compile(r"flash|fmha|sdpa|attention|attn|aten::_?scaled_dot_product", re.IGNORECASE)
_COPY = re.compile(r"memcpy|memset|copy|cat_?array", re.IGNORECASE)
_HOST = re.compile(r"TorchDynamo|CompiledFxGraph|Torch-Compiled Region|bytecode|Runtime Wrapper|CompiledFunction")
_EAGER = re.compile(r"elementwise|reduce_kernel|layer_norm|norm_kernel|softmax|aten::", re.IGNORECASE)


def classify_kernel(name: str) -> str:
    """The category of one kernel (CUDA) or op (CPU profile) name.

    Example:
        >>> classify_kernel("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT")
        'gemm'
        >>> classify_kernel("triton_red_fused__fused_rms_norm__scaled_dot_product_cudnn_attention__to_copy_add_mul_2")
        'fused elementwise/norm (triton)'
    """
    if name.startswith("triton_"):
        return QUANTIZE if _QUANT_TRITON.search(name) else FUSED
    for pattern, category in ((_GEMM, GEMM), (_ATTENTION, ATTENTION), (_HOST, HOST), (_COPY, COPY), (_EAGER, EAGER)):
        if pattern.search(name):
            return category
    return OTHER


def time_budget(table, *, flops: StepFlops | None = None, step_ms: float | None = None,
                gemm_tflops: float | None = None, attention_tflops: float | None = None):
    """Per-category time of one step from its kernel table (pandas DataFrame: name, count, cuda_time_us).

    Args:
        table: a kernel table per step (fluxperf.bench.kernels.profile_kernel_table / load_kernel_table).
        flops: the step's FLOPs; GEMM rows use linear + embed, attention rows attention.
        step_ms: the measured step time; the part no kernel covers becomes the launch-gaps row.
        gemm_tflops, attention_tflops: rates (e.g. the bf16 GEMM peak measured by the calibration); the
            ms_at_rate column says how long the category's FLOPs take at that rate.

    Returns:
        DataFrame with COLUMNS, one row per category present (largest first), then the gaps row, then "total".
    """
    import pandas as pd

    if table.empty:
        raise ValueError("the kernel table is empty: nothing was profiled (was the step run under the profiler?)")
    df = table.assign(category=table["name"].map(classify_kernel))
    grouped = df.groupby("category").agg(us=("cuda_time_us", "sum"), launches=("count", "sum"))
    kernel_ms = grouped["us"].sum() / 1e3
    work = {GEMM: (flops.linear + flops.embed) if flops else None, ATTENTION: flops.attention if flops else None}
    rates = {GEMM: gemm_tflops, ATTENTION: attention_tflops}
    rows = []
    for category, row in grouped.sort_values("us", ascending=False).iterrows():
        ms = row["us"] / 1e3
        f, rate = work.get(category), rates.get(category)
        rows.append({"category": category, "ms": ms, "launches": row["launches"],
                     "tflops": f / ms / 1e9 if f and ms > 0 else None,
                     "ms_at_rate": f / rate / 1e9 if f and rate else None})
    total_ms = kernel_ms
    if step_ms is not None:
        if step_ms < kernel_ms * 0.98:
            raise ValueError(f"step_ms={step_ms} is below the kernels' own {kernel_ms:.1f} ms: the table and the step "
                             "time come from different steps (or the table counts more than one step).")
        rows.append({"category": GAPS, "ms": max(0.0, step_ms - kernel_ms), "launches": None, "tflops": None,
                     "ms_at_rate": None})
        total_ms = max(step_ms, kernel_ms)
    total_flops = flops.total if flops else None
    rows.append({"category": "total", "ms": total_ms, "launches": grouped["launches"].sum(),
                 "tflops": total_flops / total_ms / 1e9 if total_flops else None, "ms_at_rate": None})
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS])
    out["share"] = out["ms"] / total_ms
    return out


def to_markdown(budget) -> str:
    """The budget as a markdown table (ms to 0.01, share in %, TFLOP/s to 1)."""
    lines = ["| category | ms | share | launches | TFLOP/s | ms at rate |", "|---|---:|---:|---:|---:|---:|"]
    for r in budget.itertuples(index=False):
        lines.append(f"| {r.category} | {r.ms:.2f} | {100 * r.share:.1f}% | {_int(r.launches)} | {_num(r.tflops, 0)} "
                     f"| {_num(r.ms_at_rate, 2)} |")
    return "\n".join(lines) + "\n"


def _num(x, digits: int) -> str:
    return "" if x is None or x != x else f"{x:.{digits}f}"


def _int(x) -> str:
    return "" if x is None or x != x else f"{x:.0f}"
