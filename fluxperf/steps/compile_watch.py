"""Recompiles of a compiled pipeline: counted per compiled region, and a clear error at dynamo's limit.

Dynamo compiles one graph per code object (e.g. `FluxSingleTransformerBlock.forward`) for every input signature
its guards do not cover (shapes, strides, dtypes) and gives up at `torch._dynamo.config.recompile_limit` (8) graphs
per code object (`accumulated_recompile_limit`, 256, over all). With fullgraph=True it then raises a bare
`FailOnRecompileLimitHit`; with fullgraph=False it silently runs that code eagerly from then on.

`CompileWatch` makes both loud and visible:
* `watch.guard(module, call)` sets a wrapper in `module._compiled_call_impl` (the slot `nn.Module.__call__` uses
  for a compiled module): each top-level call (the transformer, the VAE decoder; once per denoising step) runs
  with dynamo's `fail_on_recompile_limit_hit=True` (set and restored around the call, ~10 us), and a limit hit
  becomes `RecompileLimitError` naming the limit, the code object, its graph count and the fix;
* `watch.as_dict()` reports the graphs each compiled region holds and the recompiles (graphs beyond the first
  per code object). Counts are process-wide per code object, as dynamo's limit counts them (pipelines of the
  same classes share compiled graphs); `torch._dynamo.reset()` clears them.

Example:
    >>> watch = CompileWatch()                                # doctest: +SKIP
    >>> watch.add_region(FluxSingleTransformerBlock)          # doctest: +SKIP
    >>> watch.guard(transformer, transformer._call_impl)      # doctest: +SKIP
    >>> watch.as_dict()                                       # doctest: +SKIP
    {'compiled_graphs': {'FluxSingleTransformerBlock.forward': 2}, 'recompiles': 1, 'recompile_limit': 8}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxperf.errors import FluxperfError


class RecompileLimitError(FluxperfError, RuntimeError):
    """torch.compile reached dynamo's recompile limit on one of the pipeline's compiled regions."""


class CompileWatch:
    """The compiled regions of one pipeline (by code object) and the guard around its top-level calls."""

    def __init__(self) -> None:
        self._regions: dict[str, Any] = {}  # "Class.forward" -> code object

    def add_region(self, cls: type) -> None:
        """Count the graphs of `cls.forward` (a compiled module's class)."""
        self._regions[f"{cls.__qualname__}.forward"] = cls.forward.__code__

    def counts(self) -> dict[str, int]:
        """Graphs dynamo holds now for each region's code object."""
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list

        return {label: len(_debug_get_cache_entry_list(code)) for label, code in self._regions.items()}

    def as_dict(self) -> dict[str, Any]:
        """{"compiled_graphs": {region: graphs}, "recompiles": graphs beyond the first per region,
        "recompile_limit": torch._dynamo.config.recompile_limit}."""
        import torch._dynamo

        counts = self.counts()
        return {"compiled_graphs": counts, "recompiles": sum(max(n - 1, 0) for n in counts.values()),
                "recompile_limit": torch._dynamo.config.recompile_limit}

    def guard(self, module, call: Callable) -> None:
        """Route `module`'s calls through `call` (its compiled callable, or `module._call_impl` for a module whose
        children are compiled) with the recompile limit made loud (see the module docstring)."""
        module._compiled_call_impl = _Guarded(call, self)

    def limit_error(self, cause: BaseException) -> RecompileLimitError:
        import torch._dynamo

        cfg = torch._dynamo.config
        counts = self.counts()
        full = [f"{label} holds {n}" for label, n in counts.items() if n >= cfg.recompile_limit]
        if full:
            limit = f"torch._dynamo.config.recompile_limit={cfg.recompile_limit} compiled graphs: {', '.join(full)}"
        else:
            limit = (f"torch._dynamo.config.accumulated_recompile_limit={cfg.accumulated_recompile_limit} "
                     f"(graphs per region: {counts})")
        return RecompileLimitError(
            f"torch.compile reached {limit}; every input shape, stride or dtype its graphs do not cover compiles "
            f"another ({sum(max(c - 1, 0) for c in counts.values())} recompiles so far). Fix: compile.dynamic=True "
            "(dynamic shapes from the first call), fewer distinct input shapes, or a higher limit around the calls "
            "(with torch._dynamo.config.patch(recompile_limit=N): ...); TORCH_LOGS=recompiles names each cause."
        )


class _Guarded:
    """`call` with fail_on_recompile_limit_hit=True scoped to it; a limit hit is re-raised as RecompileLimitError."""

    def __init__(self, call: Callable, watch: CompileWatch) -> None:
        self.call, self.watch = call, watch

    def __call__(self, *args, **kwargs):
        import torch._dynamo
        from torch._dynamo.exc import FailOnRecompileLimitHit

        # set and restored around the call (try/finally: the scope of config.patch at a quarter of its ~45 us)
        cfg = torch._dynamo.config
        before = cfg.fail_on_recompile_limit_hit
        cfg.fail_on_recompile_limit_hit = True
        try:
            return self.call(*args, **kwargs)
        except FailOnRecompileLimitHit as exc:
            raise self.watch.limit_error(exc) from exc
        finally:
            cfg.fail_on_recompile_limit_hit = before
