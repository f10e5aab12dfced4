"""Attack on compile.cuda_graph (fluxperf.steps.compile_graph): bad input, misuse and model changes after install.

Each bug test failed on the code it was written against (fixed since, as classes) and states what a user should
get. The transformer is called under no_grad, as pipelines call it (the grad test re-enables it). `FxGraphBackend` is a CPU stand-in that
is closer to a real CUDA graph than EagerReplayBackend: it records the call once (make_fx: the aten ops, with the
weight tensors held by reference, as a graph holds their addresses) and replays that recording, so Python-level
changes after capture are NOT re-run, exactly as on the GPU (EagerReplayBackend re-runs all Python and hides them).
"""

from __future__ import annotations

import pytest
import torch

from fluxperf.errors import FluxperfError, UnavailableError
from fluxperf.steps.compile_graph import graphed, install_cuda_graph
from fluxperf.steps.export.cudagraph import EagerReplayBackend


class FxGraphBackend:
    """Record once (make_fx over the tensor kwargs), replay the recording into the same static outputs."""

    def capture(self, fn, static_args, static_kwargs):
        from torch.fx.experimental.proxy_tensor import make_fx

        names = [n for n, v in static_kwargs.items() if isinstance(v, torch.Tensor)]
        tensors = [static_kwargs[n] for n in names]
        gm = make_fx(lambda *ts: fn(*static_args, **{**static_kwargs, **dict(zip(names, ts))}))(*tensors)
        outputs = gm(*tensors)
        return (gm, tensors, outputs), outputs

    def replay(self, handle) -> None:
        gm, tensors, outputs = handle
        for static, fresh in zip(outputs, gm(*tensors)):
            static.copy_(fresh)


@pytest.fixture(autouse=True)
def inference():
    with torch.no_grad():
        yield


def _transformer(tiny_pipe_factory):
    return tiny_pipe_factory("schnell", text_encoders=False).transformer


def _inputs(seed=0, tokens=16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.zeros(tokens), torch.arange(tokens) // 4, torch.arange(tokens) % 4], -1).float()
    return {"hidden_states": torch.randn(1, tokens, 64, generator=g), "encoder_hidden_states": torch.randn(1, 16, 32, generator=g),
            "pooled_projections": torch.randn(1, 32, generator=g), "timestep": torch.tensor([0.75]),
            "img_ids": ids, "txt_ids": torch.zeros(16, 3), "guidance": None, "joint_attention_kwargs": {},
            "return_dict": False}


# == bugs ==========================================================================================================
def test_return_dict_true_gives_back_the_sample_tensor_not_a_generator(tiny_pipe_factory):
    """FluxTransformer2DModel's own default is return_dict=True. Through the graphed call the output's `sample` is a
    Python generator object (CudaGraphRunner._rebuild passes a generator to the BaseOutput dataclass): silently
    wrong. It should be the same tensor the plain call gives."""
    tr = _transformer(tiny_pipe_factory)
    want = tr(**{**_inputs(), "return_dict": True}).sample
    install_cuda_graph(tr, backend=EagerReplayBackend())
    got = tr(**{**_inputs(), "return_dict": True})
    assert isinstance(got.sample, torch.Tensor), type(got.sample)
    torch.testing.assert_close(got.sample, want)


def test_a_call_with_grad_enabled_is_not_silently_detached(tiny_pipe_factory):
    """Fine-tuning / guidance-by-gradient code calls the transformer under enable_grad with inputs that require grad.
    The graphed call runs under no_grad and returns an output with requires_grad=False: backward() then fails far
    away, or gradients are silently missing. It should refuse in one line (graphs are inference only) or fall back
    to the plain call."""
    tr = _transformer(tiny_pipe_factory)
    install_cuda_graph(tr, backend=EagerReplayBackend())
    x = _inputs()["hidden_states"].requires_grad_()
    try:
        with torch.enable_grad():
            out = tr(**{**_inputs(), "hidden_states": x})[0]
    except FluxperfError as exc:
        assert "grad" in str(exc) and "Fix:" in str(exc) and "\n" not in str(exc)
        return
    assert out.requires_grad, "the graphed call dropped the autograd graph without a word"


def test_installing_twice_does_not_nest_one_graphed_call_inside_another(tiny_pipe_factory):
    """A second install_cuda_graph records the first GraphedCall as its call: on a GPU that captures one runner's
    capture/replay inside the other's graph, with every input copied twice. It should refuse (already installed)
    or leave the one installed."""
    tr = _transformer(tiny_pipe_factory)
    install_cuda_graph(tr, backend=EagerReplayBackend())
    first = graphed(tr)
    try:
        install_cuda_graph(tr, backend=EagerReplayBackend())
    except FluxperfError as exc:
        assert "already" in str(exc) and "Fix:" in str(exc)
        return
    assert not isinstance(graphed(tr).call, type(first)), "a GraphedCall wrapping a GraphedCall"


def test_install_without_a_backend_on_a_cpu_model_is_refused_at_install_in_one_line(tiny_pipe_factory):
    """install_cuda_graph(module) is public; the default backend records CUDA graphs. On a CPU transformer it
    installs without a word and the first call dies with torch's raw 'Tried to instantiate dummy base class
    _graph_pool_handle'. check_cuda exists and gives the clear line: install should run it (no backend given)."""
    tr = _transformer(tiny_pipe_factory)
    with pytest.raises(UnavailableError, match="CUDA graphs"):
        install_cuda_graph(tr)
    assert tr._compiled_call_impl is None


@pytest.mark.parametrize("scope", ["regional", "whole"])
def test_a_refused_cuda_graph_stage_leaves_no_compiled_module_behind(tiny_pipe_factory, eager_backend, scope):
    """apply() with compile.cuda_graph on a CPU pipeline raises the clear UnavailableError, but only AFTER the
    compile stage compiled the transformer (check_cuda runs after compile_transformer), and the stage is not in
    the applied stack: remove(pipe) says it undid 'dtype' and the transformer stays compiled. The refusal should
    come before the compile (nothing compiled), or the stage's own changes be undone when it raises."""
    from fluxperf.apply import apply, remove

    pipe = tiny_pipe_factory("schnell", text_encoders=False)
    with pytest.raises(UnavailableError, match="CUDA graphs"):
        apply(pipe, {"base": "compile", "dtype": "float32", "compile": {"cuda_graph": True, "scope": scope,
                                                                        "vae": False}})
    remove(pipe)
    left = [n or "<transformer>" for n, m in pipe.transformer.named_modules() if m._compiled_call_impl is not None]
    assert left == [], f"still compiled after the refusal and remove(): {left}"


def _scale_attention_output(tr):
    block = tr.single_transformer_blocks[0].attn
    inner = block.processor

    class Doubled:
        def __call__(self, attn, *args, **kwargs):
            return 2 * inner(attn, *args, **kwargs)

    block.set_processor(Doubled())


def _hook_on_a_block(tr):  # a LoRA-style forward hook added after install
    tr.single_transformer_blocks[0].proj_out.register_forward_hook(lambda module, args, out: out * 1.5)


def _swap_a_parameterless_submodule(tr):  # e.g. a different activation
    tr.single_transformer_blocks[0].act_mlp = torch.nn.ReLU()


@pytest.mark.parametrize("change", [_swap_a_parameterless_submodule, _hook_on_a_block, _scale_attention_output],
                         ids=["swap_activation_module", "forward_hook", "set_attn_processor"])
def test_model_changes_after_capture_are_followed_not_replayed_stale(tiny_pipe_factory, change):
    """The WeightsGuard only watches parameter/buffer tensors and the modules on their paths. A submodule without
    parameters swapped, a forward hook added, or an attention processor replaced after the first call change what
    the transformer computes, but the graph is not dropped (recaptures stays 0) and a real graph replays the old
    computation: a silently wrong result. It should re-capture (or refuse) on such a change."""
    tr, reference = _transformer(tiny_pipe_factory), _transformer(tiny_pipe_factory)
    install_cuda_graph(tr, backend=FxGraphBackend())
    tr(**_inputs())
    change(tr), change(reference)
    got, want = tr(**_inputs())[0], reference(**_inputs())[0]
    torch.testing.assert_close(got, want)  # fails: the replay ran the computation captured before the change
    assert graphed(tr).recaptures == 1, graphed(tr).report()


# == correct behaviour (pinned) ====================================================================================
def test_weight_updates_in_place_replaced_or_swapped_are_followed_under_a_real_recording(tiny_pipe_factory):
    """Under a backend that really replays a recording: param.data.mul_ (same storage), param.data = new tensor,
    a whole Linear swapped: each next call equals the plain model with the same change; outputs already held
    by the caller are not overwritten by later replays."""
    tr, reference = _transformer(tiny_pipe_factory), _transformer(tiny_pipe_factory)
    install_cuda_graph(tr, backend=FxGraphBackend())
    held = tr(**_inputs())[0]
    kept = held.clone()
    changes = [lambda t: t.proj_out.weight.data.mul_(1.5),
               lambda t: setattr(t.proj_out.weight, "data", t.proj_out.weight.data * 0.5),
               lambda t: setattr(t, "proj_out", torch.nn.Linear(32, 64).requires_grad_(False))]
    for i, change in enumerate(changes):
        change(tr)
        if i == 2:
            reference.proj_out = tr.proj_out
        else:
            change(reference)
        torch.testing.assert_close(tr(**_inputs(seed=i + 1))[0], reference(**_inputs(seed=i + 1))[0])
    assert torch.equal(held, kept) and graphed(tr).recaptures == 2


def test_more_resolutions_than_max_graphs_evict_and_still_give_the_right_outputs(tiny_pipe_factory):
    tr = _transformer(tiny_pipe_factory)
    want = {n: tr(**_inputs(tokens=n))[0] for n in (4, 8, 12, 16, 20, 4)}
    install_cuda_graph(tr, backend=EagerReplayBackend(), max_graphs=2)
    for n in (4, 8, 12, 16, 20, 4):
        torch.testing.assert_close(tr(**_inputs(tokens=n))[0], want[n])
    assert graphed(tr).report()["evictions"] == 4
