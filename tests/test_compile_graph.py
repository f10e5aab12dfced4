"""compile.cuda_graph (fluxperf.steps.compile_graph) on CPU: the whole-call graph wrapper around the compiled tiny
transformer, with the EagerReplayBackend standing in for CUDA capture (it replays on the static buffers, as a graph
would), compiled with dynamo's eager backend; the recipe rules, the CPU refusal and the undo. The CUDA capture
itself is tests/gpu/test_cudagraph_gpu.py's subject and the `speed` perf group's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxperf.apply import apply, remove
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.ladder import recipe_from
from fluxperf.requirements import missing
from fluxperf.steps.compile_graph import graphed, install_cuda_graph
from fluxperf.steps.export.cudagraph import EagerReplayBackend


def _image(pipe, steps=2, height=64):
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=g), "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}
    return pipe(height=height, width=64, num_inference_steps=steps, guidance_scale=0.0, output_type="np",
                generator=torch.Generator().manual_seed(0), **embeds).images


@pytest.mark.parametrize("scope", ["regional", "whole"])
def test_the_graphed_call_replays_the_compiled_transformer_exactly(tiny_pipe_factory, eager_backend, scope):
    pipe = tiny_pipe_factory("schnell", text_encoders=False)
    apply(pipe, {"dtype": "float32", "compile": {"enabled": True, "scope": scope, "vae": False}})
    want = _image(pipe)
    report = install_cuda_graph(pipe.transformer, backend=EagerReplayBackend())
    got = _image(pipe)
    np.testing.assert_array_equal(got, want)
    stats = graphed(pipe.transformer).report()
    assert (stats["recorded"], stats["replays"], stats["recaptures"]) == (1, 2, 0)  # one signature, 2 steps
    assert report == {"cuda_graph": True, "max_graphs": 4, "records": "the whole transformer call"}
    _image(pipe, height=80)  # a new resolution: a second graph, not the old one on the old buffers
    assert graphed(pipe.transformer).report()["recorded"] == 2


def test_replaced_weights_drop_the_graphs_and_the_next_call_follows_them(tiny_pipe_factory, eager_backend):
    pipe = tiny_pipe_factory("schnell", text_encoders=False)
    apply(pipe, {"dtype": "float32", "compile": {"enabled": True, "vae": False}})
    install_cuda_graph(pipe.transformer, backend=EagerReplayBackend())
    before = _image(pipe)
    proj = pipe.transformer.proj_out
    proj.weight = torch.nn.Parameter(proj.weight.detach() * 1.5)  # a LoRA merge / load_state_dict(assign=True)
    after = _image(pipe)
    assert graphed(pipe.transformer).recaptures == 1 and not np.array_equal(after, before)
    reference = tiny_pipe_factory("schnell", text_encoders=False)
    apply(reference, {"dtype": "float32"})
    reference.transformer.proj_out.weight = torch.nn.Parameter(reference.transformer.proj_out.weight.detach() * 1.5)
    np.testing.assert_allclose(after, _image(reference), atol=1e-5)


def test_the_compile_stage_installs_it_and_remove_takes_it_off(tiny_pipe_factory, eager_backend, monkeypatch):
    """Through apply(): the compile stage installs the graphed call after compiling (its report says so) and its
    undo memo restores the transformer's call. The CUDA gate and the capture backend are the only stand-ins here
    (check_cuda passes, EagerReplayBackend records) — the stage's own wiring and undo are the real code."""
    from fluxperf.steps import compile_graph
    from fluxperf.steps.export import cudagraph

    monkeypatch.setattr(compile_graph, "check_cuda", lambda module: None)
    monkeypatch.setattr(cudagraph, "CudaGraphBackend", EagerReplayBackend)
    pipe = tiny_pipe_factory("schnell", text_encoders=False)
    plain = tiny_pipe_factory("schnell", text_encoders=False)
    apply(plain, {"dtype": "float32"})
    stack = apply(pipe, {"dtype": "float32", "compile": {"enabled": True, "vae": False, "cuda_graph": True}})
    assert stack.to_dict()["steps"]["compile"]["cuda_graph"]["cuda_graph"] is True
    np.testing.assert_allclose(_image(pipe), _image(plain), atol=1e-5)
    assert graphed(pipe.transformer).report()["replays"] == 2
    remove(pipe)
    assert graphed(pipe.transformer) is None and pipe.transformer._compiled_call_impl is None


@pytest.mark.parametrize("changes, message", [
    ({"compile": {"enabled": False, "cuda_graph": True}}, "compile.cuda_graph=True with compile.enabled=False"),
    ({"compile": {"cuda_graph": True}, "first_block_cache": {"enabled": True}},
     "compile.cuda_graph=True with first_block_cache.enabled=True"),
    ({"compile": {"cuda_graph": True}, "parallel": {"enabled": True, "ulysses_degree": 2}},
     "compile.cuda_graph=True with parallel.enabled=True"),
])
def test_cuda_graph_combinations_that_cannot_work_are_refused(changes, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from({"base": "compile", **changes})


def test_cuda_graph_is_refused_on_cpu_before_and_at_apply(tiny_pipe_factory):
    recipe = {"base": "compile", "compile": {"cuda_graph": True}}
    (line,) = missing(recipe, "cpu")
    assert line.startswith("compile.cuda_graph=True: CUDA graphs is not available") and "Fix:" in line
    with pytest.raises(UnavailableError, match="CUDA graphs"):
        apply(tiny_pipe_factory("schnell", text_encoders=False), {**recipe, "dtype": "float32"})


def test_the_runner_serves_inference_mode_and_no_grad_callers_alike():
    """The numerics tier calls the transformer under torch.inference_mode(), pipelines under no_grad: inference
    tensors have no version counter (the runner's mutation check raised "Inference tensors do not track version
    counter") and could not be refilled by a no_grad caller. Mutated inputs still reach the caller, in its mode."""
    from fluxperf.steps.export.cudagraph import CudaGraphRunner

    lin = torch.nn.Linear(8, 8)

    def step(x, latents):
        latents.add_(1.0)
        return lin(x)

    run = CudaGraphRunner(step, backend=EagerReplayBackend())
    x = torch.randn(2, 8)
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with mode():
            latents = torch.zeros(3)
            out = run(x.clone(), latents)
            torch.testing.assert_close(out, lin(x))
            assert latents.tolist() == [1.0, 1.0, 1.0] and out.is_inference() == (mode is torch.inference_mode)
    assert run.stats.recorded == 1 and run.stats.replays == 3
