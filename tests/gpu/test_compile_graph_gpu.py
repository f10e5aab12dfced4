"""compile.cuda_graph on a real GPU (fluxperf.steps.compile_graph): the regionally compiled tiny transformer (real
Inductor) replayed as one CUDA graph per input signature gives the compiled pipeline's image, a new resolution
records a new graph, replaced weights are followed (re-capture), and the whole call replays with no host sync.

Run: pytest -m gpu tests/gpu/test_compile_graph_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxperf.apply import apply, remove
from fluxperf.steps.compile_graph import graphed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.numerics,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; run `pytest -m gpu` on a GPU machine"),
]
# the same Inductor kernels replayed on the same inputs: bf16 images agree to the last pixel level (1/255)
ATOL = 1.0 / 255


def _image(pipe, height=64):
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=g).to("cuda", torch.bfloat16),
              "pooled_prompt_embeds": torch.randn(1, 32, generator=g).to("cuda", torch.bfloat16)}
    return pipe(height=height, width=64, num_inference_steps=4, guidance_scale=0.0, output_type="np",
                generator=torch.Generator().manual_seed(0), **embeds).images


@pytest.fixture
def pipes(tiny_pipe_factory):
    torch._dynamo.reset()
    plain = tiny_pipe_factory("schnell", dtype="bfloat16", text_encoders=False).to("cuda")
    graph = tiny_pipe_factory("schnell", dtype="bfloat16", text_encoders=False).to("cuda")
    apply(plain, {"base": "compile", "compile": {"vae": False}})
    stack = apply(graph, {"base": "compile", "compile": {"vae": False, "cuda_graph": True}})
    yield plain, graph, stack
    remove(graph)
    torch._dynamo.reset()


def test_the_graph_replays_the_compiled_transformer(pipes):
    plain, graph, stack = pipes
    want = _image(plain)
    np.testing.assert_allclose(_image(graph), want, atol=ATOL)
    np.testing.assert_allclose(_image(graph), want, atol=ATOL)  # replays of the recorded graph
    stats = graphed(graph.transformer).report()
    assert stats["recorded"] == 1 and stats["replays"] >= 8 and stats["recaptures"] == 0
    assert stack.to_dict()["steps"]["compile"]["cuda_graph"]["cuda_graph"] is True


def test_a_new_resolution_records_a_new_graph(pipes):
    plain, graph, _ = pipes
    _image(graph)
    np.testing.assert_allclose(_image(graph, height=80), _image(plain, height=80), atol=ATOL)
    assert graphed(graph.transformer).report()["recorded"] == 2


def test_replaced_weights_are_followed(pipes):
    plain, graph, _ = pipes
    _image(graph)
    for pipe in (plain, graph):
        proj = pipe.transformer.proj_out
        proj.weight = torch.nn.Parameter(proj.weight.detach() * 1.5)
    np.testing.assert_allclose(_image(graph), _image(plain), atol=ATOL)
    assert graphed(graph.transformer).recaptures == 1


def test_a_replayed_step_does_not_sync_with_the_host(pipes):
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec, transformer_inputs

    _, graph, _ = pipes
    inputs = transformer_inputs(ShapeSpec("schnell", 64, 64, text_len=16), dims_of_pipeline(graph), device="cuda",
                                dtype=torch.bfloat16, seed=0)
    with torch.no_grad():
        graph.transformer(**inputs)  # recorded (the capture itself may synchronize)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            graph.transformer(**inputs)  # replays: copy in, replay, clone out
            graph.transformer(**inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert graphed(graph.transformer).report()["replays"] >= 2
