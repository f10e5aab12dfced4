"""What fluxperf's block caches share: the checks before enabling one, which cache is on a pipeline, the
cache-dit pipeline-class patch, the reset at the start of each pipeline call, and the shape of per-call step counts.

The caches themselves live in `fluxperf.steps.caching.cache_dit` (cache-dit DBCache, the only importer of cache_dit),
`fluxperf.steps.caching.first_block` (diffusers' first-block cache) and `fluxperf.steps.caching.teacache` (TeaCache,
fluxperf's diffusers-style hooks); each imports this module and none imports another.
`fluxperf.steps.caching.stats` dispatches over them for callers that do not know which one a recipe enabled.

One attribute on the pipeline, `STATE_ATTR`, holds the enabled cache's kind and its module's own state: the
caches exclude each other, so one slot is the whole bookkeeping, and asking "which cache is on" reads one name.
Importing this module imports neither torch, cache-dit nor diffusers.

Example:
    >>> enabled_cache(object()) is None
    True
    >>> step_stats([2, 3], 4, 4)["executed_steps"]
    2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fluxperf.errors import FluxperfError, RecipeError

STATE_ATTR = "_fluxperf_block_cache"
KINDS = ("cache_dit", "first_block", "teacache")


@dataclass
class _Slot:
    kind: str  # one of KINDS
    state: Any  # the cache module's own state object


# -- which cache is on a pipeline --------------------------------------------------------------------------------
def enabled_cache(pipe) -> str | None:
    """"cache_dit", "first_block", "teacache" or None: the block cache fluxperf enabled on `pipe` (and has not
    disabled)."""
    slot = getattr(pipe, STATE_ATTR, None)
    return slot.kind if slot is not None else None


def attach(pipe, kind: str, state: Any) -> None:
    """Record that the `kind` cache is enabled on `pipe`, with its module's state.

    Raises:
        FluxperfError: another (or the same) cache is already recorded: the enabling module must check first.
    """
    if kind not in KINDS:
        raise FluxperfError(f"caching.attach: kind={kind!r} is not one of {KINDS}.")
    current = enabled_cache(pipe)
    if current is not None:
        raise FluxperfError(f"caching.attach: the {current} cache is already enabled on this pipeline; "
                            "disable it before enabling another.")
    setattr(pipe, STATE_ATTR, _Slot(kind, state))


def state_of(pipe, kind: str, error: str) -> Any:
    """The state the `kind` cache keeps on `pipe`.

    Args:
        error: the message of the FluxperfError raised when `kind` is not enabled (it names the caller and fix).
    """
    slot = getattr(pipe, STATE_ATTR, None)
    if slot is None or slot.kind != kind:
        raise FluxperfError(error)
    return slot.state


def detach(pipe, kind: str) -> None:
    """Forget the `kind` cache on `pipe` (its module has undone its hooks). No-op if it is not the one recorded."""
    if enabled_cache(pipe) == kind:
        delattr(pipe, STATE_ATTR)


def pipeline_class_patched(cls: type) -> bool:
    """True while cache-dit has patched `cls.__call__` (it does so for the pipeline CLASS, so one cached pipeline
    changes every pipeline of its class in the process)."""
    return bool(getattr(cls, "_is_cached", False)) or "_original_call" in cls.__dict__


def reset_at_call_start(pipe, reset):
    """A wrapper of the pipeline's bound check_inputs that calls `reset()` first, for pipe.check_inputs.

    Every diffusers FLUX pipeline calls `self.check_inputs(...)` before anything else, so the wrapper runs at the
    start of each call: diffusers resets cache state only at the END of a call (`maybe_free_model_hooks`), which a
    call that raised never reaches. The caller installs it (`pipe.check_inputs = wrapper`, an instance attribute)
    and deletes it on disable.
    """
    original = pipe.check_inputs

    def check_inputs(*args, **kwargs):
        reset()
        return original(*args, **kwargs)

    return check_inputs


@dataclass(kw_only=True)
class HookState:
    """What a hook-based block cache (first-block cache, TeaCache) keeps on the pipeline: its report, the hook
    handles, the cache context it opened itself (Kontext) and its check_inputs wrapper (install_hooks sets them)."""

    report: dict
    handles: list = field(default_factory=list)
    own_context: Any = None  # the cache_context we opened (Kontext), closed after the call
    check_inputs: Any = None  # our wrapper of pipe.check_inputs (resets state at the start of each call)


def open_cond_context(state, module, manager) -> None:
    """Open the "cond" cache context on `module` (the transformer) when the pipeline opened none
    (FluxKontextPipeline): diffusers' cache hooks key their state on a context. Kept in `state.own_context`."""
    if manager._context is None:
        state.own_context = module.cache_context("cond")
        state.own_context.__enter__()


def close_own_context(state) -> None:
    """Close the context open_cond_context opened, if any (at the end of each transformer call, also on error)."""
    if state.own_context is not None:
        context, state.own_context = state.own_context, None
        context.__exit__(None, None, None)


def install_hooks(pipe, kind: str, state, pre_hook, post_hook, reset) -> None:
    """Hook the transformer's whole forward (pre: decide, post: record; the post hook runs also when the forward
    raised), reset the cache at the start of every pipeline call (reset_at_call_start) and attach `state` to the
    pipeline under `kind`. `state` needs `handles` and `check_inputs` attributes (detach() undoes all three)."""
    transformer = pipe.transformer
    state.handles = [transformer.register_forward_pre_hook(pre_hook, with_kwargs=True),
                     transformer.register_forward_hook(post_hook, with_kwargs=True, always_call=True)]
    state.check_inputs = reset_at_call_start(pipe, reset)
    pipe.check_inputs = state.check_inputs
    attach(pipe, kind, state)


# -- checks before enabling a cache ------------------------------------------------------------------------------
def check_variant(variant: str, pipe, what: str) -> None:
    """Refuse schnell (by name or by a transformer without guidance embedding): 4 steps leave nothing to cache.

    Raises:
        RecipeError: `variant` is not a FLUX.1 variant, or the variant / the pipeline is schnell.
    """
    from fluxperf.model.build import variant_of

    if variant not in ("dev", "kontext", "schnell"):
        raise RecipeError(f"{what}: variant={variant!r} is not a FLUX.1 variant. Fix: use 'dev' or 'kontext'.")
    if variant == "schnell" or variant_of(pipe) == "schnell":
        raise RecipeError(
            f"{what} with variant='schnell': schnell samples in 4 steps and the cache's warm-up steps alone "
            "exceed them (the first steps are always computed), so nothing would be served from the cache while "
            f"the hooks still cost time. Fix: use variant 'dev' or 'kontext' (28 steps), or disable {what}."
        )


def check_steps(num_inference_steps: Any, warmup: int, what: str) -> None:
    """Refuse a step count that is not a positive int, or that leaves no step after the `warmup` steps.

    Raises:
        RecipeError: naming the count, the warm-up and the fix.
    """
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
        raise RecipeError(f"{what}: num_inference_steps={num_inference_steps!r} must be a positive integer.")
    if num_inference_steps <= warmup:
        raise RecipeError(
            f"{what}: num_inference_steps={num_inference_steps} <= warm-up steps {warmup}: every step is a warm-up "
            "step, so nothing can be cached. Fix: more steps (dev/kontext use 28) or fewer warm-up steps."
        )


def is_compiled(transformer) -> bool:
    """True if the transformer (whole) or any of its blocks (regional) has been torch.compile'd."""
    import torch

    if isinstance(transformer, torch._dynamo.eval_frame.OptimizedModule):
        return True
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in transformer.modules())


def check_not_compiled(transformer, what: str) -> None:
    """Raises RecipeError if the transformer is compiled: the cache must go on before torch.compile."""
    if is_compiled(transformer):
        raise RecipeError(
            f"{what} on an already compiled transformer: the cache replaces the transformer's and blocks' forward "
            "paths, which compiled code has already captured. Fix: apply caching before torch.compile "
            "(fluxperf.apply does: ... quantize -> caching -> compile)."
        )


# -- per-call counts -----------------------------------------------------------------------------------------------
def step_stats(cached_indices: list[int], total_steps: int, num_inference_steps: int) -> dict[str, Any]:
    """The step counts every block cache reports for one pipeline call.

    Args:
        cached_indices: sorted indices of the transformer steps served from the cache.
        total_steps: transformer steps the call ran (computed + cached).
        num_inference_steps: the step count the cache was configured for.
    Returns:
        {"cached_steps", "executed_steps" (total - cached), "total_steps", "cached_step_indices",
         "num_inference_steps"}.
    """
    cached = list(cached_indices)
    return {"cached_steps": len(cached), "executed_steps": total_steps - len(cached), "total_steps": total_steps,
            "cached_step_indices": cached, "num_inference_steps": num_inference_steps}
