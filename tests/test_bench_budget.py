"""fluxperf.bench.budget and `fluxperf profile`: kernel tables split into categories, on the stored H100 tables
and on a live CPU profile of the tiny model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fluxperf.bench.budget import (
    ATTENTION,
    COPY,
    EAGER,
    FUSED,
    GAPS,
    GEMM,
    HOST,
    OTHER,
    QUANTIZE,
    classify_kernel,
    time_budget,
)
from fluxperf.bench.flops import step_flops
from fluxperf.cli import main
from fluxperf.model.shapes import ShapeSpec

ROOT = Path(__file__).resolve().parents[1]
H100_COMPILE = ROOT / "baselines/nvidia-h100-80gb-hbm3/kernels/test_ladder.py-test_transformer_step-compile.csv"
SCHNELL = ShapeSpec("schnell", 1024, 1024)


@pytest.mark.parametrize("name, category", [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT", GEMM),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float>", GEMM),
    ("sm90_xmma_gemm_e4m3bf16_e4m3f32_f32_tn_n_tilesize128x128x128", GEMM),
    ("aten::addmm", GEMM),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7", ATTENTION),
    ("void flash::FlashAttnFwdSm90<flash::CollectiveMainloopFwdSm90<2, cute::tuple<>, 128>>", ATTENTION),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", ATTENTION),
    # Inductor names a kernel after what it fused: attention in the name, but it is a triton pointwise kernel
    ("triton_poi_fused__scaled_dot_product_cudnn_attention__to_copy_add_cat_mul_neg_permute_stack_unbind", FUSED),
    ("triton_red_fused_abs_amax_view_3", QUANTIZE),
    ("triton_poi_fused__to_copy_clamp_mul_reciprocal_4", QUANTIZE),
    ("triton_per_fused__fused_rms_norm_view_4", FUSED),
    ("Memset (Device)", COPY),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy_vectorized<>", COPY),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::sin_kernel_cuda>", EAGER),
    ("## Call CompiledFxGraph fxmdl6tyb7 ##", HOST),
    ("ncclDevKernel_AllReduce", OTHER),
])
def test_classify(name, category):
    assert classify_kernel(name) == category


def test_h100_compile_step_budget():
    """The stored H100 profile of the compiled schnell step (the numbers perf/RESULTS.md quotes)."""
    table = pd.read_csv(H100_COMPILE)
    budget = time_budget(table, flops=step_flops(SCHNELL), step_ms=130.99, gemm_tflops=716.0).set_index("category")
    assert budget.loc[GEMM, "ms"] == pytest.approx(83.11, abs=0.01)
    assert budget.loc[ATTENTION, "ms"] == pytest.approx(24.28, abs=0.01)
    assert budget.loc[FUSED, "ms"] == pytest.approx(17.31, abs=0.01)
    assert budget.loc[GAPS, "ms"] == pytest.approx(130.99 - table["cuda_time_us"].sum() / 1e3)
    assert budget.loc[GEMM, "tflops"] == pytest.approx(676, abs=1)  # (linear + embed FLOPs) / GEMM time
    assert budget.loc[GEMM, "ms_at_rate"] == pytest.approx(78.5, abs=0.1)
    assert budget.loc["total", "ms"] == 130.99 and budget.loc["total", "launches"] == table["count"].sum()
    parts = budget.drop(index="total")
    assert parts["ms"].sum() == pytest.approx(130.99) and parts["share"].sum() == pytest.approx(1.0)


def test_step_time_below_the_kernels_is_refused():
    table = pd.read_csv(H100_COMPILE)
    with pytest.raises(ValueError, match="different steps"):
        time_budget(table, step_ms=100.0)


def test_empty_table_is_refused():
    with pytest.raises(ValueError, match="empty"):
        time_budget(pd.DataFrame(columns=["name", "count", "cuda_time_us"]))


def test_cli_reads_a_stored_table(capsys):
    assert main(["profile", "--table", str(H100_COMPILE), "--step-ms", "130.99"]) == 0
    out = capsys.readouterr().out
    assert "| gemm | 83.11 |" in out and "launch gaps" in out


def test_cli_missing_table_exits_2_with_the_fix(capsys, tmp_path):
    assert main(["profile", "--table", str(tmp_path / "none.csv")]) == 2
    assert "no kernel table" in capsys.readouterr().err


def test_cli_profiles_a_rung_live_on_cpu(tmp_path, capsys):
    out = tmp_path / "prof"
    assert main(["profile", "--rung", "bf16", "--device", "cpu", "--rounds", "2", "--out", str(out)]) == 0
    budget = pd.read_csv(out / "budget.csv").set_index("category")
    assert budget.loc[GEMM, "ms"] > 0 and budget.loc[ATTENTION, "ms"] > 0  # tiny FLUX: addmm + CPU SDPA
    assert GAPS not in budget.index  # CPU profiles time the host thread itself
    kernels = pd.read_csv(out / "kernels.csv")
    assert budget.loc["total", "ms"] == pytest.approx(kernels["cuda_time_us"].sum() / 1e3)
    assert (out / "budget.md").read_text().startswith("| category |")
