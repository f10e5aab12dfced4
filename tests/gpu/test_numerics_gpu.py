"""GPU numerics tier: every rung against the bf16 eager reference, plus engagement guards.

Per rung (full-size synthetic schnell, 1024x1024, 4 steps): one transformer forward and one VAE decode
(relative error, the precise signal), the image (PSNR/SSIM/max abs error vs the reference image), and guards
that the optimization really happened. Thresholds: baselines/<gpu>/numerics.json (fluxperf.measure.thresholds).
Set FLUXPERF_NUMERICS_RECORD=1 to also write the measured values to $OUT/numerics-measured.json.

The experiment table's rungs (fp16, fa2, int8: eager) and compile_faithful (flux-fast's whole-model max-autotune
compile of the flags stack; marked slow: its cold compile is minutes) are here too; TeaCache is refused on schnell,
so its numerics live in tests/gpu/test_experiment_gpu.py (FLUX.1-dev, 28 steps).
"""

from __future__ import annotations

import pytest
from root_conftest import recipe_marks

from fluxperf.measure.runner import free_gpu

pytestmark = [pytest.mark.gpu, pytest.mark.numerics]

RUNGS = ["compile", "fused_qkv", "channels_last", "fa3_fp8", "float8", "fp16", "fa2", "int8", "compile_faithful",
         "float8_only_row", "float8_static", "float8_autotune",
         "float8_graph"]
SLOW = {"compile_faithful"}  # whole-model max-autotune: a cold compile of minutes
FULL_TRANSFORMER_BLOCKS = 19 + 38


def _params():
    return [pytest.param(name, marks=[*recipe_marks(name)[0], *([pytest.mark.slow] if name in SLOW else [])])
            for name in RUNGS]


def _recipe(name: str):
    from fluxperf.ladder import rung

    return rung(name)


@pytest.fixture(scope="module", params=_params())
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
    recipe = _recipe(measured["rung"])
    if not recipe.compile.enabled:
        assert measured["compiled_modules"] == 0 and measured["image_repeatable"]
        pytest.skip(f"{measured['rung']} is eager: no compile to guard")
    wrapped = FULL_TRANSFORMER_BLOCKS if recipe.compile.scope == "regional" else 1
    assert measured["compiled_modules"] == wrapped, f"{recipe.compile.scope} compile did not wrap what it should"
    assert measured["graph_breaks"] == 0
    assert measured["recompiles"] == 0, "recompiled across denoising steps / repeated calls"
    assert measured["unique_graphs"] >= 2  # double and single block graphs (+ VAE decoder)
    assert measured["image_repeatable"], "two identical calls gave different images"


def test_engagement_rung_specific(measured):
    recipe = _recipe(measured["rung"])
    if recipe.fuse_qkv:
        assert measured["fused_modules"] == measured["attention_modules"] == FULL_TRANSFORMER_BLOCKS
    if recipe.channels_last:
        assert measured["vae_channels_last"]
    if recipe.attention.backend != "sdpa":
        assert measured["attention"]["backend"] == recipe.attention.backend
        assert not measured["attention"].get("fallback_reason")
    if recipe.attention.backend == "fa3_fp8":
        assert measured["attention_op_calls"] == FULL_TRANSFORMER_BLOCKS, (
            f"fp8 attention op ran {measured['attention_op_calls']} times in one forward, expected "
            f"{FULL_TRANSFORMER_BLOCKS} (one per block)")


def test_engagement_float8(measured):
    if _recipe(measured["rung"]).quantize.kind != "float8":
        pytest.skip("float8 guard applies to float8 rungs")
    assert measured["float8_expected"] > 0
    assert measured["float8_count"] == measured["float8_expected"], (
        f"{measured['float8_count']} of {measured['float8_expected']} eligible Linear layers are float8: "
        "quantization was skipped or partial")


def test_engagement_int8(measured):
    if _recipe(measured["rung"]).quantize.kind != "int8":
        pytest.skip("int8 guard applies to int8 rungs")
    report = measured["applied"]["steps"]["quantize"]
    # every FLUX.1 Linear has in/out features that are multiples of 8; only the one-row-per-sample ones (AdaLN
    # modulations, embedders: 81 on schnell) stay bf16, as torch._int_mm needs > 16 rows
    assert report["int8_count"] == report["linear_count"] - 81 > 0, report["skipped_reasons"]
    assert all("one activation row per sample" in why for why in report["skipped_reasons"].values())
    assert measured["float8_count"] == 0
