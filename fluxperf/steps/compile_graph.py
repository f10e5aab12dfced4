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
the recorded ones (~1 µs per tensor on the host) and drops every graph on a change, so the next call re-captures
(`recaptures` counts it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxperf.errors import UnavailableError
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

    def __call__(self, *args, **kwargs):
        if self.guard.swapped_modules() or self.guard.changed():
            self.runner.clear()
            self._watch()
            self.recaptures += 1
        return self.runner(*args, **kwargs)

    def report(self) -> dict:
        return {**self.runner.stats.__dict__, "recaptures": self.recaptures, "max_graphs": self.runner.max_graphs}


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
    """
    previous = module._compiled_call_impl
    call = previous if previous is not None else module._call_impl
    module._compiled_call_impl = GraphedCall(module, call, backend=backend, max_graphs=max_graphs)
    return {"cuda_graph": True, "max_graphs": max_graphs, "records": "the whole transformer call"}


def graphed(module) -> GraphedCall | None:
    """The GraphedCall installed on `module`, or None."""
    call = getattr(module, "_compiled_call_impl", None)
    return call if isinstance(call, GraphedCall) else None
