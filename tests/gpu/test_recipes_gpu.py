"""Recipes on valid input on the GPU (issue 13): float8 on shapes torchao cannot take, many resolutions on one
compiled pipeline (real Inductor), Kontext conditioning shapes. Run: pytest -m gpu tests/gpu/test_recipes_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxperf.apply import apply
from fluxperf.recipe import Recipe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _sm89() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


# -- float8 on awkward shapes ---------------------------------------------------------------------------------
@pytest.mark.torchao
@pytest.mark.skipif(not _sm89(), reason="float8 matmuls need an sm89+ GPU")
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_float8_with_pooled_projection_dim_24_runs_and_reports(tiny_pipe_factory, granularity):
    """inner dim 128, pooled_projection_dim 24: before, tensor-wise float8 crashed at the first forward with
    'input_tensor must be 1x128 scaled' on the 128->128 Linears while the report said only 24->128 was skipped."""
    pytest.importorskip("torchao", reason="needs torchao: pip install 'fluxperf[torchao]'")
    from tests.test_quantize_shapes import awkward_inputs, awkward_transformer

    pipe = tiny_pipe_factory("schnell", text_encoders=False)
    pipe.transformer = awkward_transformer().cuda()
    inputs = {k: v.cuda() for k, v in awkward_inputs().items()}
    with torch.no_grad():
        ref = pipe.transformer(**inputs, return_dict=False)[0].float()
    stack = apply(pipe.to("cuda"), Recipe.from_dict({"dtype": "bfloat16", "quantize": {"kind": "float8",
                                                                                     "granularity": granularity}}))
    with torch.no_grad():
        out = pipe.transformer(**inputs, return_dict=False)[0].float()
    assert torch.isfinite(out).all() and ((out - ref).norm() / ref.norm()).item() < 0.1
    report = stack.step("quantize")
    assert "24->128" in report["skipped_reasons"]["time_text_embed.text_embedder.linear_1"]
    assert report["float8_count"] > 0 and report["float8_count"] == stack.float8_linear_count
    square = {n for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)
              and (m.in_features, m.out_features) == (128, 128)}
    assert (square <= set(report["skipped"])) is (granularity == "tensor")


# -- compile: many resolutions, Kontext conditioning shapes ---------------------------------------------------------
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_rung_serves_eight_resolutions(tiny_pipe_factory, fresh_dynamo):
    """apply(pipe, "compile") with Inductor: before, the 5th resolution raised FailOnRecompileLimitHit."""
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=g).cuda().bfloat16(),
              "pooled_prompt_embeds": torch.randn(1, 32, generator=g).cuda().bfloat16()}
    ref = tiny_pipe_factory("schnell", dtype="bfloat16", text_encoders=False).to("cuda")
    pipe = tiny_pipe_factory("schnell", dtype="bfloat16", text_encoders=False).to("cuda")
    stack = apply(pipe, "compile")

    def run(p, height, width):
        return p(height=height, width=width, num_inference_steps=2, guidance_scale=0.0, output_type="np",
                 generator=torch.Generator().manual_seed(0), **embeds).images

    for height, width in [(64, 64), (80, 64), (96, 64), (112, 64), (128, 64), (64, 80), (64, 96), (144, 64),
                          (64, 64)]:
        np.testing.assert_allclose(run(pipe, height, width), run(ref, height, width), atol=0.05)
    graphs = stack.recompiles["compiled_graphs"]
    assert max(graphs.values()) < torch._dynamo.config.recompile_limit, graphs
    assert graphs["FluxTransformerBlock.forward"] <= 2 and graphs["FluxSingleTransformerBlock.forward"] <= 4, graphs


def test_compiled_kontext_serves_conditioning_shapes(tiny_pipe_factory, fresh_dynamo):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=g).cuda().bfloat16(),
              "pooled_prompt_embeds": torch.randn(1, 32, generator=g).cuda().bfloat16()}
    pipe = tiny_pipe_factory("kontext", dtype="bfloat16", text_encoders=False).to("cuda")
    stack = apply(pipe, Recipe.from_dict({"dtype": "bfloat16", "compile": {"enabled": True, "vae": False}}))
    for cond_h, cond_w in [(64, 64), (48, 96), (96, 48), (64, 112), (112, 64)]:
        pixels = np.random.RandomState(0).randint(0, 255, (cond_h, cond_w, 3), dtype=np.uint8)
        out = pipe(image=Image.fromarray(pixels), height=64, width=64, max_area=64 * 64, _auto_resize=False,
                   num_inference_steps=2, guidance_scale=2.5, output_type="np", **embeds).images
        assert np.isfinite(out).all()
    graphs = stack.recompiles["compiled_graphs"]
    assert max(graphs.values()) < torch._dynamo.config.recompile_limit, graphs
