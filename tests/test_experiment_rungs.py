"""The FLUX.1-dev experiment table's rungs and the flux-fast-faithful compile rung (issue 15, parts 1 and 6) on CPU.

TeaCache and int8 have their own files (tests/test_teacache.py, tests/test_int8.py); here: what each rung is, the
eager fp16 pipeline on the tiny model, fa2's refusal on a CPU (SDPA's flash kernel is CUDA-only) and its GPU need,
and the faithful compile rung's torch.compile arguments (its run needs FA3 + float8: tests/gpu/test_numerics_gpu.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from fluxperf.apply import apply, plan
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.ladder import EXPERIMENT_RUNGS, recipe_from, rung, rung_names
from fluxperf.requirements import requirements
from fluxperf.steps.compile import compile_options

STEPS = 4


def test_the_experiment_rungs_are_named_rungs():
    assert set(EXPERIMENT_RUNGS) <= set(rung_names())
    assert {"fp16", "fa2", "int8", "teacache", "compile_faithful"} <= set(rung_names())


@pytest.mark.parametrize("name, dtype, backend, quant, cache", [
    ("fp16", "float16", "sdpa", "none", None),
    ("fa2", "bfloat16", "flash", "none", None),
    ("int8", "bfloat16", "sdpa", "int8", None),
    ("teacache", "bfloat16", "sdpa", "none", ("teacache", 0.4)),
    ("fa2_fbcache_float8", "bfloat16", "flash", "float8", ("first_block", 0.3)),
    ("fa2_fbcache_int8", "bfloat16", "flash", "int8", ("first_block", 0.3)),
])
def test_each_experiment_rung_is_the_tables_configuration(name, dtype, backend, quant, cache):
    r = rung(name)
    assert (r.dtype, r.attention.backend, r.quantize.kind) == (dtype, backend, quant)
    assert not r.compile.enabled and not r.fuse_qkv and not r.export.enabled  # the table's rungs run eager
    fbc = r.first_block_cache
    assert ((fbc.kind, fbc.threshold) if fbc.enabled else None) == cache


def test_fp16_runs_the_whole_pipeline_in_float16(tiny_image_runner):
    pipe, run = tiny_image_runner("dev", STEPS)
    ref = run()
    pipe, run = tiny_image_runner("dev", STEPS)
    stack = apply(pipe, "fp16", variant="dev")
    assert stack.stage_names == ["dtype"]
    assert {str(p.dtype) for c in (pipe.transformer, pipe.vae) for p in c.parameters()} == {"torch.float16"}
    image = run()
    assert np.isfinite(image).all() and np.abs(image - ref).max() < 0.03  # measured 0.0076 vs fp32


def test_fa2_needs_an_ampere_gpu_and_is_refused_on_cpu(tiny_pipe_factory):
    reqs = requirements("fa2")
    assert reqs.hardware == ("sm80",) and reqs.packages == ()
    with pytest.raises(UnavailableError, match="CUDA"):
        apply(tiny_pipe_factory("dev", text_encoders=False), "fa2", variant="dev")


def test_fa2_with_sdpa_fallback_runs_on_cpu(tiny_pipe_factory):
    pipe = tiny_pipe_factory("dev", text_encoders=False)
    stack = apply(pipe, {"base": "fa2", "attention": {"fallback": "sdpa"}}, variant="dev")
    report = stack.step("attention")
    assert report["requested"] == "flash" and report["backend"] == "sdpa" and report["fallback_reason"]


def test_combined_rungs_plan_every_stage_in_order():
    assert plan(rung("fa2_fbcache_float8")) == ["dtype", "attention", "quantize", "first_block_cache"]
    assert plan(rung("compile_int8")) == ["dtype", "quantize", "compile"]
    # the table's combinations stay valid with compile on top, as the caches allow (fullgraph=False)
    assert recipe_from({"base": "fa2_fbcache_int8", "compile": {"enabled": True, "fullgraph": False}}).compile.enabled


# -- part 6: the flux-fast-faithful compile rung ---------------------------------------------------------------------
def test_compile_faithful_is_flux_fasts_compile_on_the_full_stack():
    faithful, guarded = rung("compile_faithful"), rung("flags")
    c = faithful.compile
    assert (c.scope, c.fullgraph, c.vae, c.mode) == ("whole", True, True, "max-autotune-no-cudagraphs")
    # everything else is the flags rung (the guarded configuration): only the compile differs
    assert faithful.replace(compile=guarded.compile.__dict__, name="flags") == guarded
    assert (guarded.compile.scope, guarded.compile.mode) == ("regional", None)


def test_compile_faithful_passes_max_autotunes_options_without_cuda_graphs():
    import torch

    r = rung("compile_faithful")
    kwargs = compile_options(r.compile, r.inductor_flags.options())
    mode = dict(torch._inductor.list_mode_options("max-autotune"))
    assert mode.pop("triton.cudagraphs") is True  # the one option of flux-fast's mode the rung leaves out
    assert kwargs["fullgraph"] is True and "mode" not in kwargs
    assert {k: kwargs["options"][k] for k in mode} == mode and "triton.cudagraphs" not in kwargs["options"]
    assert {k: kwargs["options"][k] for k in r.inductor_flags.options()} == r.inductor_flags.options()


@pytest.mark.parametrize("mode", ["max-autotune", "reduce-overhead"])
def test_the_unsafe_faithful_variant_stays_refused(mode):
    with pytest.raises(RecipeError, match=rf"compile.mode='{mode}' with compile.scope='whole'.*21 %.*compile_faithful"):
        recipe_from({"base": "compile_faithful", "compile": {"mode": mode}})
