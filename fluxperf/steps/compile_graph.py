"""Whole-call CUDA graphs around the compiled transformer (`compile.cuda_graph`; issue 17's launch-gap lever).

On the H200 the compiled stacks are partly host-bound: the flags rung's step took 126.8 ms against float8's 95.3 ms
with the same 1985 kernels per step (perf/RESULTS.md, "H200, session 3"). Replaying the whole transformer call as
one CUDA graph removes the per-kernel launches from the host's critical path. Inductor's own CUDA graph trees
(compile modes "reduce-overhead" / "max-autotune") gave wrong images under the pipeline on the H200 and stay
refused (recipe_rules); this uses fluxperf's CudaGraphRunner (fluxperf.steps.export.cudagraph), which the export
rung already uses: graphs keyed on the signature of every argument, inputs copied into static buffers, outputs
cloned so a later replay cannot overwrite them.

Installed as the transformer's `_compiled_call_impl` (what nn.Module.__call__ runs when set): the runner records
the call that was there, the compiled module's own (scope "whole") or the plain call into regionally compiled blocks
(scope "regional"), so the graph holds the compiled kernels and no Python runs on a replay. Weights replaced after
apply() (a LoRA load, load_state_dict(assign=True), param.data = ...) would leave the graphs reading the old
tensors: before every call a WeightsGuard (fluxperf.steps.export.weights) compares the parameters and buffers with
the recorded ones (~1 µs per tensor on the host), and a StructureGuard the module tree, hooks and attention
processors (a LoRA hook, a swapped activation, set_processor); a change drops every graph, so the next call
re-captures (`recaptures` counts it). A call with gradients enabled and an input or parameter that requires grad is
refused: the graphs are inference only (pipelines call under no_grad).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxperf.errors import FluxperfError, UnavailableError
from fluxperf.steps.export.cudagraph import CudaGraphRunner
from fluxperf.steps.export.weights import WeightsGuard

MAX_GRAPHS = 4  # input signatures kept per transformer (resolutions / batch sizes), least recently used evicted


class GraphedCall:
    """The transformer's call through a CudaGraphRunner, re-captured when its weights change.

    Attributes:
        runner: the CudaGraphRunner (stats: recorded, replays, evictions, cached).
        recaptures: times the graphs were dropped because weights were replaced.
    """

    def __init__(self, module, call: Callable[..., Any], *, backend=None, max_graphs: int = MAX_GRAPHS):
        self.module, self.call = module, call
        self.runner = CudaGraphRunner(call, backend=backend, max_graphs=max_graphs, name="transformer")
        self.recaptures = 0
        self._watch()

    def _watch(self) -> None:
        names = [n for n, _ in self.module.named_parameters()] + [n for n, _ in self.module.named_buffers()]
        self.guard = WeightsGuard(None, self.module, names, "user")
        self.structure = StructureGuard(self.module)

    def __call__(self, *args, **kwargs):
        import torch

        if torch.is_grad_enabled() and self._wants_grad(args, kwargs):
            raise FluxperfError(
                "compile.cuda_graph: the transformer was called with gradients enabled and an input or parameter "
                "that requires grad, but its CUDA graphs are recorded for inference (a replay builds no autograd "
                "graph). Fix: call it under torch.no_grad() or torch.inference_mode() (diffusers pipelines do), or "
                "apply without compile.cuda_graph to train.")
        if self.structure.changed() or self.guard.swapped_modules() or self.guard.changed():
            self.runner.clear()
            self._watch()
            self.recaptures += 1
        return self.runner(*args, **kwargs)

    def _wants_grad(self, args, kwargs) -> bool:
        import torch

        inputs = [*args, *kwargs.values()]
        return (any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)
                or any(p.requires_grad for p in self.module.parameters()))

    def report(self) -> dict:
        return {**self.runner.stats.__dict__, "recaptures": self.recaptures, "max_graphs": self.runner.max_graphs}


class StructureGuard:
    """What a replayed graph silently assumes besides the weights (WeightsGuard's): every submodule is the object it
    was (children, attention processors, instance `forward`s), and no module hook was registered since (a LoRA hook:
    torch's RemovableHandle counter, which every hook registration advances, also one elsewhere in the process: a
    needless re-capture then, never a stale replay). `changed()` is identity checks only: ~0.1 ms for FLUX.1's 1275
    modules, where comparing a full fingerprint took 2.7 ms on a slow CPU."""

    def __init__(self, module):
        from torch.utils.hooks import RemovableHandle

        self._handles = RemovableHandle
        self.hook_id = RemovableHandle.next_id
        self.slots = []  # (a dict, key, the object it held): _modules entries, processors, instance forwards
        for m in module.modules():
            self.slots.extend((m._modules, name, child) for name, child in m._modules.items())
            self.slots.extend((m.__dict__, key, m.__dict__.get(key)) for key in ("processor", "forward"))

    def changed(self) -> bool:
        if self._handles.next_id != self.hook_id:
            return True
        return any(table.get(key) is not held for table, key, held in self.slots)


def check_cuda(module) -> None:
    """Raise UnavailableError unless `module` is on a CUDA device (CUDA graphs record CUDA kernels)."""
    device = next(iter(module.parameters())).device
    if device.type != "cuda":
        raise UnavailableError("CUDA graphs (compile.cuda_graph=True)", f"the transformer is on {device}",
                               "run on a CUDA machine with the pipeline moved there (pipe.to('cuda')), or set "
                               "compile.cuda_graph=False")


def install_cuda_graph(module, *, backend=None, max_graphs: int = MAX_GRAPHS) -> dict:
    """Route `module`'s calls through a GraphedCall recording the call it had (compiled or plain).

    Args:
        module: the (compiled) transformer.
        backend: a fluxperf.steps.export.cudagraph.GraphBackend (None: CudaGraphBackend; EagerReplayBackend on a CPU
            for tests).
        max_graphs: input signatures kept.
    Returns:
        the stage report: {"cuda_graph": True, "max_graphs": ..., "records": "the whole transformer call"}.
    Raises:
        FluxperfError: a GraphedCall is installed already; UnavailableError: no backend given and `module` is not
            on a CUDA device.
    """
    previous = module._compiled_call_impl
    if isinstance(previous, GraphedCall):
        raise FluxperfError("install_cuda_graph: this transformer's calls already replay CUDA graphs (one GraphedCall "
                            "is installed). Fix: use it as it is, or remove(pipe) / reset _compiled_call_impl first.")
    if backend is None:
        check_cuda(module)  # the default backend records CUDA graphs
    call = previous if previous is not None else module._call_impl
    module._compiled_call_impl = GraphedCall(module, call, backend=backend, max_graphs=max_graphs)
    return {"cuda_graph": True, "max_graphs": max_graphs, "records": "the whole transformer call"}


def graphed(module) -> GraphedCall | None:
    """The GraphedCall installed on `module`, or None."""
    call = getattr(module, "_compiled_call_impl", None)
    return call if isinstance(call, GraphedCall) else None
