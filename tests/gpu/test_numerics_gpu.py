"""GPU numerics tier: every rung against the bf16 eager reference, plus engagement guards.

Per rung (full-size synthetic schnell, 1024x1024, 4 steps): one transformer forward and one VAE decode
(relative error, the precise signal), the image (PSNR/SSIM/max abs error vs the reference image), and guards
that the optimization really happened. Thresholds: baselines/<gpu>/numerics.json (fluxperf.measure.thresholds).
Set FLUXPERF_NUMERICS_RECORD=1 to also write the measured values to $OUT/numerics-measured.json.
"""

from __future__ import annotations

import pytest
from root_conftest import recipe_marks

from fluxperf.measure.runner import free_gpu

pytestmark = [pytest.mark.gpu, pytest.mark.numerics]

RUNGS = ["compile", "fused_qkv", "channels_last", "fa3_fp8", "float8"]
FULL_TRANSFORMER_BLOCKS = 19 + 38


@pytest.fixture(scope="module", params=[pytest.param(name, marks=recipe_marks(name)[0]) for name in RUNGS])
def measured(request, reference, numerics_record):
    import torch

    from fluxperf.measure.numerics import measure_rung

    name = request.param
    _, missing = recipe_marks(name, check=True)
    if missing:
        pytest.skip(missing)
    try:
        result = measure_rung(name, reference)
    except torch.cuda.OutOfMemoryError as exc:
        free_gpu()
        pytest.fail(f"rung {name}: CUDA out of memory ({exc}); memory freed, the other rungs still run")
    finally:
        free_gpu()
    numerics_record[name] = {"psnr_db": result["image"]["psnr_db"], "ssim": result["image"]["ssim"],
                      "max_abs_error": result["image"]["max_abs_error"],
                      "forward_rel_err": result["forward_rel_err"], "vae_rel_err": result["vae_rel_err"]}
    print(f"\n[numerics] {name}: {numerics_record[name]}")
    return result


def test_forward_close_to_eager(measured, thresholds):
    failure = thresholds.check_rel_err(measured["rung"], "forward", measured["forward_rel_err"])
    assert failure is None, failure


def test_vae_decode_close_to_eager(measured, thresholds):
    failure = thresholds.check_rel_err(measured["rung"], "vae", measured["vae_rel_err"])
    assert failure is None, failure


def test_image_psnr(measured, thresholds):
    failure = thresholds.check_psnr(measured["rung"], measured["image"])
    assert failure is None, failure


def test_engagement_compile_fullgraph_no_recompiles(measured):
    assert measured["compiled_modules"] == FULL_TRANSFORMER_BLOCKS, "regional compile did not wrap every block"
    assert measured["graph_breaks"] == 0
    assert measured["recompiles"] == 0, "recompiled across denoising steps / repeated calls"
    assert measured["unique_graphs"] >= 2  # double and single block graphs (+ VAE decoder)
    assert measured["image_repeatable"], "two identical calls gave different images"


def test_engagement_rung_specific(measured):
    name = measured["rung"]
    if name in ("fused_qkv", "channels_last", "fa3_fp8", "float8"):
        assert measured["fused_modules"] == measured["attention_modules"] == FULL_TRANSFORMER_BLOCKS
    if name in ("channels_last", "fa3_fp8", "float8"):
        assert measured["vae_channels_last"]
    if name in ("fa3_fp8", "float8"):
        assert measured["attention"]["backend"] == "fa3_fp8" and not measured["attention"].get("fallback_reason")
        assert measured["attention_op_calls"] == FULL_TRANSFORMER_BLOCKS, (
            f"fp8 attention op ran {measured['attention_op_calls']} times in one forward, expected "
            f"{FULL_TRANSFORMER_BLOCKS} (one per block)")


def test_engagement_float8(measured):
    if measured["rung"] != "float8":
        pytest.skip("float8 guard applies to the float8 rung")
    assert measured["float8_expected"] > 0
    assert measured["float8_count"] == measured["float8_expected"], (
        f"{measured['float8_count']} of {measured['float8_expected']} eligible Linear layers are float8: "
        "quantization was skipped or partial")
