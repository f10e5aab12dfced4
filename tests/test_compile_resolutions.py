"""A compiled pipeline serves any number of resolutions and Kontext conditioning shapes (CPU, tiny models).

Before: compile with dynamic=False cost FluxTransformerBlock one graph and FluxSingleTransformerBlock two per
resolution, so the 5th resolution raised FailOnRecompileLimitHit (dynamo's limit of 8 graphs per code object).

Dynamo decides guards and recompiles before any backend runs, so these tests compile with backend="eager" (as the
other CPU compile tests do) through the real apply() path; the inductor case is one slow test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxperf.apply import apply
from fluxperf.recipe import Recipe
from fluxperf.steps import compile as fcompile
from fluxperf.steps.compile_watch import RecompileLimitError

RESOLUTIONS = [(64, 64), (80, 64), (96, 64), (112, 64), (128, 64), (64, 80), (64, 96), (144, 64), (96, 112),
               (64, 64)]  # 9 distinct sizes, then the first again
COMPILE = {"compile": {"enabled": True}}  # the "compile" rung in fp32: regional, fullgraph, dynamic=False, VAE too
# Every size is run (that is what drives the recompiles); the output is compared with an eager pipeline at the first
# two sizes (static graph, then the first dynamic one) and the last two (a late new size and a repeat): the eager
# reference at every size doubled these tests' CI time without covering another code path.
def _compared(i: int, n: int) -> bool:
    return i < 2 or i >= n - 2


def _schnell(tiny_pipe_factory):
    pipe = tiny_pipe_factory("schnell", text_encoders=False)
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=g), "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}

    def run(height, width, batch=1):
        return pipe(height=height, width=width, num_inference_steps=2, guidance_scale=0.0, output_type="np",
                    num_images_per_prompt=batch, generator=torch.Generator().manual_seed(0), **embeds).images

    return pipe, run


# the "compile" rung as is (VAE decoder compiled too), then the other scopes/modes on the transformer alone (time)
# (regional, fullgraph=False) is in the exhaustive run (pytest -m exhaustive): graph breaks allowed changes nothing in
# how the token dimension turns dynamic, and the default run covers regional (the rung) and whole (CI time)
@pytest.mark.parametrize("scope, fullgraph, vae", [("regional", True, True),
                                                   pytest.param("regional", False, False, marks=pytest.mark.exhaustive),
                                                   ("whole", True, False)])
def test_many_resolutions_in_a_row_on_one_compiled_pipeline(tiny_pipe_factory, eager_backend, scope, fullgraph, vae):
    ref_pipe, ref_run = _schnell(tiny_pipe_factory)
    pipe, run = _schnell(tiny_pipe_factory)
    stack = apply(pipe, Recipe.from_dict({**COMPILE, "dtype": "float32", "compile": {
        "enabled": True, "scope": scope, "fullgraph": fullgraph, "vae": vae}}))
    graphs = []
    for i, (height, width) in enumerate(RESOLUTIONS):
        out = run(height, width)
        if _compared(i, len(RESOLUTIONS)):
            np.testing.assert_allclose(out, ref_run(height, width), atol=1e-5)
        graphs.append(stack.recompiles["compiled_graphs"])
    # the transformer's token dimension becomes dynamic at the first change; later sizes compile nothing. (The VAE
    # decoder's height and width change separately, and the conv backend choice adds size-range guards: a few more.)
    blocks = [{k: v for k, v in g.items() if not k.startswith("Decoder")} for g in graphs]
    assert blocks[-8:] == [blocks[-1]] * 8, graphs
    assert max(max(g.values()) for g in graphs) < torch._dynamo.config.recompile_limit, graphs
    report = stack.to_dict()["recompiles"]
    assert report["recompiles"] == sum(n - 1 for n in graphs[-1].values()) and report["recompile_limit"] == 8
    expected = {"regional": {"FluxTransformerBlock.forward", "FluxSingleTransformerBlock.forward"},
                "whole": {"FluxTransformer2DModel.forward"}}[scope] | ({"Decoder.forward"} if vae else set())
    assert set(report["compiled_graphs"]) == expected


def test_batch_changes_are_served_too(tiny_pipe_factory, eager_backend):
    pipe, run = _schnell(tiny_pipe_factory)
    stack = apply(pipe, Recipe.from_dict({"dtype": "float32", "compile": {"enabled": True, "vae": False}}))
    for batch, height in ((1, 64), (2, 64), (3, 80), (2, 96), (1, 64)):
        assert run(height, 64, batch).shape == (batch, height, 64, 3)
    assert max(stack.recompiles["compiled_graphs"].values()) < torch._dynamo.config.recompile_limit


def _kontext(tiny_pipe_factory):
    from PIL import Image

    pipe = tiny_pipe_factory("kontext", text_encoders=False)
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=g), "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}

    def run(cond_height, cond_width, height=64, width=64):
        pixels = np.random.RandomState(0).randint(0, 255, (cond_height, cond_width, 3), dtype=np.uint8)
        return pipe(image=Image.fromarray(pixels), height=height, width=width, max_area=height * width,
                    _auto_resize=False, num_inference_steps=2, guidance_scale=2.5, output_type="np",
                    generator=torch.Generator().manual_seed(0), **embeds).images

    return pipe, run


def test_kontext_conditioning_shapes_in_a_row(tiny_pipe_factory, eager_backend):
    """Conditioning images of other aspect ratios change the image token count (target + conditioning)."""
    ref_pipe, ref_run = _kontext(tiny_pipe_factory)
    pipe, run = _kontext(tiny_pipe_factory)
    stack = apply(pipe, Recipe.from_dict({"dtype": "float32", "compile": {"enabled": True, "vae": False}}))
    shapes = [(64, 64), (48, 96), (96, 48), (64, 112), (112, 64), (80, 80), (64, 64, 80, 64), (96, 48, 64, 96)]
    graphs = []
    for i, shape in enumerate(shapes):
        out = run(*shape)
        if _compared(i, len(shapes)):
            np.testing.assert_allclose(out, ref_run(*shape), atol=1e-5)
        graphs.append(stack.recompiles["compiled_graphs"])
    blocks = [{k: v for k, v in g.items() if not k.startswith("Decoder")} for g in graphs]
    assert blocks[-6:] == [blocks[-1]] * 6, graphs
    assert max(graphs[-1].values()) < torch._dynamo.config.recompile_limit, graphs


@pytest.mark.parametrize("fullgraph", [True, False])
def test_a_reached_limit_is_a_clear_error_naming_limit_count_and_fix(tiny_pipe_factory, eager_backend, fullgraph):
    """fullgraph=True used to raise a bare FailOnRecompileLimitHit; fullgraph=False silently ran eagerly."""
    pipe, run = _schnell(tiny_pipe_factory)
    apply(pipe, Recipe.from_dict({**COMPILE, "dtype": "float32", "compile": {"enabled": True, "fullgraph": fullgraph,
                                                                             "vae": False}}))
    with torch._dynamo.config.patch(recompile_limit=2):
        with pytest.raises(RecompileLimitError, match=r"torch\._dynamo\.config\.recompile_limit=2 compiled graphs: .*"
                                                      r"FluxSingleTransformerBlock\.forward holds 2.*"
                                                      r"Fix: compile\.dynamic=True.*recompile_limit=N"):
            for height, width in RESOLUTIONS:
                run(height, width)
    assert torch._dynamo.config.fail_on_recompile_limit_hit is False  # scoped to the compiled calls


def test_compile_options_never_pass_torch_dynamic_false():
    from fluxperf.recipe import CompileConfig

    assert fcompile.compile_options(CompileConfig(enabled=True), {})["dynamic"] is None
    assert fcompile.compile_options(CompileConfig(enabled=True, dynamic=True), {})["dynamic"] is True


@pytest.mark.slow
def test_inductor_serves_new_resolutions(tiny_pipe_factory):
    """The real backend on CPU: static graphs first, then one dynamic graph per region serves the other sizes."""
    torch._dynamo.reset()
    try:
        ref_pipe, ref_run = _schnell(tiny_pipe_factory)
        pipe, run = _schnell(tiny_pipe_factory)
        stack = apply(pipe, Recipe.from_dict({"dtype": "float32", "compile": {"enabled": True, "vae": False}}))
        for height, width in [(64, 64), (80, 64), (96, 64), (112, 64), (128, 64)]:
            np.testing.assert_allclose(run(height, width), ref_run(height, width), atol=1e-4)
        assert stack.recompiles["compiled_graphs"] == {"FluxTransformerBlock.forward": 2,
                                                       "FluxSingleTransformerBlock.forward": 4}
    finally:
        torch._dynamo.reset()
