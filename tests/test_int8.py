"""int8 quantization (torchao Int8DynamicActivationInt8WeightConfig) through fluxperf on the tiny dev model (CPU).

torchao 0.18's int8 matmul has a CPU path (`_int_scaled_matmul_cpu`), so the real code runs here: every Linear of
the tiny transformer becomes an Int8Tensor, the stack counts them as it counts float8, and the output stays close to
the unquantized one. Tolerances measured on this tiny model: one transformer forward 1.6 % relative error (fp32 and
bf16), a 4-step 64x64 image 0.027 max abs; the ceilings below leave ~2-3x room.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxperf.apply import NotUndoableError, apply, remove
from fluxperf.ladder import recipe_from, rung
from fluxperf.recipe import QuantizeConfig
from fluxperf.requirements import missing, requirements
from fluxperf.steps.caching.stats import disable_active_cache, last_call_cache_stats
from fluxperf.steps.quantize import (
    int8_linear_count,
    int8_rows_reason,
    int8_shape_reason,
    linear_names,
    per_sample_linears,
    quantize_transformer,
)

pytestmark = pytest.mark.torchao
pytest.importorskip("torchao", reason="needs torchao: pip install 'fluxperf[torchao]'")

STEPS = 4
FORWARD_REL_ERR_MAX = 0.05  # measured 0.016
IMAGE_MAX_ABS_MAX = 0.08  # measured 0.027 (pixels in [0, 1])


def _forward(pipe):
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec, transformer_inputs

    inputs = transformer_inputs(ShapeSpec("dev", 64, 64, text_len=16), dims_of_pipeline(pipe), device="cpu",
                                dtype=pipe.transformer.dtype, seed=0)
    with torch.no_grad():
        return pipe.transformer(**inputs)[0].float()


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def reference(request, tiny_image_runner):
    pipe, run = tiny_image_runner("dev", STEPS)
    apply(pipe, {"dtype": request.param}, variant="dev")
    return request.param, _forward(pipe), run()


def test_every_linear_becomes_int8_and_the_output_stays_close(reference, tiny_image_runner):
    dtype, forward, image = reference
    pipe, run = tiny_image_runner("dev", STEPS)
    stack = apply(pipe, {"dtype": dtype, "quantize": {"kind": "int8", "granularity": "row"}}, variant="dev")
    report = stack.step("quantize")
    n = len(linear_names(pipe.transformer))
    assert report["kind"] == "int8" and report["linear_count"] == n and report["skipped"] == []
    assert report["int8_count"] == report["quantized_count"] == int8_linear_count(pipe.transformer) == n
    assert report["float8_count"] == stack.float8_linear_count == 0
    assert stack.to_dict()["steps"]["quantize"]["int8_count"] == n  # the stack's JSON carries the count
    err = ((_forward(pipe) - forward).norm() / forward.norm()).item()
    assert 0 < err <= FORWARD_REL_ERR_MAX, err  # > 0: it really ran in int8
    diff = np.abs(run() - image).max()
    assert diff <= IMAGE_MAX_ABS_MAX, diff


def test_granularity_tensor_works_too(tiny_pipe_factory):
    pipe = tiny_pipe_factory("dev", text_encoders=False)
    report = quantize_transformer(pipe.transformer, QuantizeConfig(kind="int8", granularity="tensor"))
    assert report["int8_count"] == report["linear_count"] > 0 and report["granularity"] == "tensor"


def test_cuda_shape_rule():
    """On CUDA torchao's int8 matmul falls back to a host copy for dims that are not multiples of 8: refused."""
    assert "multiples of 8" in int8_shape_reason(24, 36, "cuda")
    assert int8_shape_reason(3072, 12288, "cuda") is None and int8_shape_reason(24, 36, "cpu") is None


@pytest.mark.parametrize("variant", ["schnell", "dev"])
def test_per_sample_linears_are_the_modulations_and_embedders(tiny_pipe_factory, variant):
    """torch._int_mm needs > 16 activation rows on CUDA; these Linears get one row per sample (compile_int8 failed on
    the H200 with "self.size(0) needs to be greater than 16, but got 1"). The set is the FLUX.1 structure: every
    block's AdaLN modulation, norm_out's, and the timestep / guidance (dev) / pooled-text embedders."""
    transformer = tiny_pipe_factory(variant, text_encoders=False).transformer
    doubles, singles = len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)
    want = ({f"transformer_blocks.{i}.{n}.linear" for i in range(doubles) for n in ("norm1", "norm1_context")}
            | {f"single_transformer_blocks.{i}.norm.linear" for i in range(singles)} | {"norm_out.linear"}
            | {f"time_text_embed.{e}.linear_{k}" for k in (1, 2)
               for e in ("timestep_embedder", "text_embedder", *(["guidance_embedder"] if variant == "dev" else []))})
    assert per_sample_linears(transformer) == want
    assert want < set(linear_names(transformer))
    assert "one activation row per sample" in int8_rows_reason(True, "cuda")
    assert int8_rows_reason(True, "cpu") is None and int8_rows_reason(False, "cuda") is None


def test_int8_needs_torchao_only_and_runs_on_cpu(hide_optional):
    reqs = requirements("int8")
    assert reqs.packages == ("torchao",) and reqs.hardware == () and not reqs.gpu
    assert missing("int8", "cpu") == []
    hide_optional("torchao")
    (line,) = missing("int8", "cpu")
    assert line.startswith("quantize.kind='int8': torchao is not available") and "pip install" in line


def test_int8_cannot_be_undone(tiny_pipe_factory):
    pipe = tiny_pipe_factory("dev", text_encoders=False)
    apply(pipe, {"dtype": "float32", "quantize": {"kind": "int8"}}, variant="dev")
    with pytest.raises(NotUndoableError, match="quantize.*int8"):
        remove(pipe)


def test_combines_with_a_block_cache(tiny_image_runner):
    pipe, run = tiny_image_runner("dev", STEPS)
    try:
        stack = apply(pipe, {"dtype": "float32", "quantize": {"kind": "int8", "granularity": "row"},
                             "first_block_cache": {"enabled": True, "kind": "teacache", "threshold": 4.9}},
                      num_inference_steps=STEPS, variant="dev")
        assert stack.stage_names == ["dtype", "quantize", "first_block_cache"]
        image = run()
        assert np.isfinite(image).all() and last_call_cache_stats(pipe)["cached_step_indices"] == [1, 2]
    finally:
        disable_active_cache(pipe)


def test_combines_with_compile_under_dynamo(tiny_pipe_factory):
    """The int8 weights trace fullgraph through every block (dynamo's eager backend: the graphs, not Inductor) and
    give the eager int8 output exactly."""
    pipe = tiny_pipe_factory("dev", text_encoders=False)
    apply(pipe, {"dtype": "float32", "quantize": {"kind": "int8"}}, variant="dev")
    eager = _forward(pipe)
    torch._dynamo.reset()
    try:
        pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        torch.testing.assert_close(_forward(pipe), eager, rtol=0, atol=0)
    finally:
        for module in pipe.transformer.modules():
            module._compiled_call_impl = None
        torch._dynamo.reset()


def test_rungs():
    assert (rung("int8").quantize.kind, rung("int8").quantize.granularity, rung("int8").compile.enabled) == (
        "int8", "row", False)
    assert rung("compile_int8").compile.enabled and rung("fa2_fbcache_int8").attention.backend == "flash"
    # int8 runs in any recipe dtype (float8 stays bf16-only)
    assert recipe_from({"base": "int8", "dtype": "float16"}).dtype == "float16"
