"""diffusers' own first-block cache (FBC) on FLUX pipelines, with per-call step counts and Kontext support.

FBC (diffusers.hooks.FirstBlockCacheConfig) runs the first block every step and compares its residual with the
one of the last fully computed step: when the relative mean absolute change is <= `threshold`, all other blocks
are skipped and their cached residual is added instead. Step 0 is always computed. diffusers exposes no
counts, so this module counts them itself: a forward hook on the transformer reads the head block's decision
(`should_compute`) after every call made in the "cond" cache context.

What diffusers 0.42.1 does not do and this module does:
* FluxKontextPipeline never opens a `transformer.cache_context(...)`, which FBC needs ("No cache context is
  set"); a pre-hook opens a "cond" context around each transformer call when none is open.
* diffusers resets FBC state only at the END of a pipeline call (`maybe_free_model_hooks`): a call that raised
  (e.g. out of `callback_on_step_end`) left its residuals behind, and the next call compared against them and
  counted their steps. fluxperf resets at the START of every pipeline call instead: every diffusers FLUX
  pipeline calls `self.check_inputs(...)` first, and an instance attribute wraps it (removed on disable).
* TeaCache: diffusers 0.42.1 ships none (its hooks: FirstBlockCache, MagCache, TaylorSeer, SeaCache, FasterCache,
  PyramidAttentionBroadcast); fluxperf's own is fluxperf.steps.caching.teacache (apply() picks it for
  kind="teacache"), and this module refuses that kind.

Compile (checked with dynamo on CPU): apply FBC before torch.compile, then compile regionally with
fullgraph=False: `transformer.compile_repeated_blocks(fullgraph=False)`. The head block's hook calls a
`@torch.compiler.disable` decision (a `.item()` host sync) inside that block's compiled region, so fullgraph=True
fails ("Skip inlining `torch.compiler.disable()`d function"); fullgraph=False breaks the head block's graph
once per step and leaves the other blocks whole. See COMPILE_HINT.

Example:
    >>> from fluxperf.recipe import FirstBlockCacheConfig
    >>> apply_first_block_cache(pipe, FirstBlockCacheConfig(enabled=True, threshold=0.25), variant="dev",
    ...                         num_inference_steps=28)  # doctest: +SKIP
    >>> image = pipe(..., num_inference_steps=28).images[0]  # doctest: +SKIP
    >>> first_block_cache_stats(pipe)["cached_step_indices"]  # doctest: +SKIP
    [3, 5, 6, 8]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fluxperf.errors import FluxperfError, RecipeError
from fluxperf.steps.caching.common import (
    HookState,
    check_not_compiled,
    check_steps,
    check_variant,
    close_own_context,
    detach,
    enabled_cache,
    install_hooks,
    open_cond_context,
    state_of,
    step_stats,
)

COMPILE_HINT = {"scope": "regional", "fullgraph": False,
                "why": "the head block's FBC hook calls a torch.compiler.disable'd decision inside the compiled "
                       "block: fullgraph=True fails; fullgraph=False breaks the head block's graph once per step."}

KIND = "first_block"  # this cache's name in fluxperf.steps.caching.common (and in cache_stats' reports)


@dataclass(kw_only=True)
class _State(HookState):
    """Hooks fluxperf added and the head block's decisions of the current pipeline call."""

    head: Any  # diffusers FBCHeadBlockHook
    decisions: list[bool] = field(default_factory=list)  # per "cond" transformer call: True = all blocks ran


def teacache_available() -> bool:
    """True if the installed diffusers ships a TeaCache hook (0.42.1 does not)."""
    import diffusers.hooks

    return any(name.lower().startswith("teacache") for name in dir(diffusers.hooks))


def apply_first_block_cache(pipe, cfg, *, variant: str, num_inference_steps: int) -> dict:
    """Enable diffusers' first-block cache on a FLUX pipeline's transformer (in place) and return a report.

    Args:
        pipe: FluxPipeline (dev) or FluxKontextPipeline, not yet compiled.
        cfg: fluxperf.recipe.FirstBlockCacheConfig; `enabled=False` changes nothing and reports so.
        variant: "dev" or "kontext" ("schnell" is refused).
        num_inference_steps: steps of the calls to come (FBC's schedule does not depend on it; it is checked
            and reported as the bound on cacheable steps, steps - 1).

    Returns:
        {"enabled", "kind", "threshold", "head_block", "tail_block", "num_inference_steps",
         "max_cacheable_steps", "compile"}.

    Example:
        >>> apply_first_block_cache(pipe, FirstBlockCacheConfig(enabled=True), variant="kontext",
        ...                         num_inference_steps=28)["kind"]  # doctest: +SKIP
        'first_block'
    """
    if not cfg.enabled:
        return {"enabled": False, "kind": cfg.kind}
    cfg.validate()
    what = "first_block_cache"
    if cfg.kind == "teacache":
        raise RecipeError("apply_first_block_cache got first_block_cache.kind='teacache'. Fix: "
                          "fluxperf.steps.caching.teacache.apply_teacache (fluxperf.apply picks it for this kind).")
    check_variant(variant, pipe, what)
    check_steps(num_inference_steps, 1, what)  # step 0 is always computed
    transformer = pipe.transformer
    _check_free(pipe, what)
    check_not_compiled(transformer, what)
    _check_resettable(pipe, what)

    from diffusers.hooks import FirstBlockCacheConfig as DiffusersFBC

    transformer.enable_cache(DiffusersFBC(threshold=float(cfg.threshold)))
    head_name, head, tail_name = _fbc_hooks(transformer)
    state = _State(head=head, report={
        "enabled": True, "kind": "first_block", "threshold": float(cfg.threshold), "head_block": head_name,
        "tail_block": tail_name, "num_inference_steps": num_inference_steps,
        "max_cacheable_steps": num_inference_steps - 1, "compile": COMPILE_HINT,
    })
    install_hooks(pipe, KIND, state, _pre_hook(state), _post_hook(state), _resetter(state, transformer))
    return dict(state.report)


def first_block_cache_stats(pipe) -> dict:
    """Counts of the LAST pipeline call ("cond" transformer calls; diffusers resets FBC state after each call).

    Returns:
        {"cached_steps": steps whose remaining blocks were skipped, "executed_steps": steps whose blocks all ran,
         "total_steps", "cached_step_indices": [...], "num_inference_steps": configured}.

    Args:
        pipe: a pipeline prepared with apply_first_block_cache.

    Example:
        >>> first_block_cache_stats(pipe)["cached_steps"]  # doctest: +SKIP
        9
    """
    state = _state(pipe, "first_block_cache_stats")
    cached = [i for i, computed in enumerate(state.decisions) if not computed]
    return step_stats(cached, len(state.decisions), state.report["num_inference_steps"])


def disable_first_block_cache(pipe) -> None:
    """Remove the first-block cache and fluxperf's counting hooks; the uncached path is restored exactly.

    Args:
        pipe: a pipeline prepared with apply_first_block_cache (anything else raises FluxperfError).

    Example:
        >>> disable_first_block_cache(pipe)  # doctest: +SKIP
    """
    state = _state(pipe, "disable_first_block_cache")
    for handle in state.handles:
        handle.remove()
    if pipe.__dict__.get("check_inputs") is state.check_inputs:
        del pipe.check_inputs
    close_own_context(state)
    pipe.transformer.disable_cache()
    detach(pipe, KIND)


def is_first_block_cache_enabled(pipe) -> bool:
    """True if apply_first_block_cache enabled FBC on `pipe` (and disable_first_block_cache has not run since)."""
    return enabled_cache(pipe) == KIND


# -- internals -----------------------------------------------------------------------------------------------
def _check_free(pipe, what: str) -> None:
    transformer = pipe.transformer
    if is_first_block_cache_enabled(pipe):
        raise RecipeError(f"{what} is already enabled on this pipeline. Fix: disable_first_block_cache(pipe) first.")
    other = enabled_cache(pipe) or ("cache_dit" if getattr(transformer, "_is_cached", False) else None)
    if other is not None:
        raise RecipeError(
            f"{what} with {other} enabled on the same pipeline: both cache the transformer's blocks and would "
            "fight over them. Fix: enable only one (fluxperf.steps.caching.stats.disable_active_cache first)."
        )
    if getattr(transformer, "is_cache_enabled", False):
        raise RecipeError(
            f"{what}: a diffusers cache ({type(transformer._cache_config).__name__}) is already enabled on the "
            "transformer. Fix: transformer.disable_cache() first."
        )


def _fbc_hooks(transformer):
    """(head block name, head hook, tail block name); checks FBC picked FLUX's first and last block."""
    from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK

    head = tail = None
    for name, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        if _FBC_LEADER_BLOCK_HOOK in registry.hooks:
            head = (name, registry.hooks[_FBC_LEADER_BLOCK_HOOK])
        hook = registry.hooks.get(_FBC_BLOCK_HOOK)
        if hook is not None and hook.is_tail:
            tail = name
    want = ("transformer_blocks.0", f"single_transformer_blocks.{len(transformer.single_transformer_blocks) - 1}")
    if head is None or (head[0], tail) != want:
        transformer.disable_cache()
        raise FluxperfError(
            f"first_block_cache: diffusers put the head/tail hooks on {head and head[0]!r}/{tail!r}, expected {want}. "
            "It picks them in the order of the transformer's child modules, which something reordered "
            "(cache-dit's disable_cache does; fluxperf.steps.caching.cache_dit.disable_cache_dit restores it). "
            "Fix: rebuild the pipeline, or disable cache-dit through fluxperf.steps.caching.cache_dit."
        )
    return head[0], head[1], tail


def _resetter(state: _State, transformer):
    """What runs at the start of each call: drop the FBC state a previous call left behind (a call that raised
    never reached diffusers' end-of-call reset)."""
    def reset() -> None:
        close_own_context(state)
        state.decisions.clear()
        transformer._reset_stateful_cache()

    return reset


def _check_resettable(pipe, what: str) -> None:
    if not callable(getattr(pipe, "check_inputs", None)):
        raise FluxperfError(
            f"{what}: {type(pipe).__name__} has no check_inputs method, which fluxperf uses to reset "
            "the cache at the start of each call (an aborted call would otherwise leak its state into the next). "
            "Fix: use a diffusers FLUX pipeline (FluxPipeline, FluxKontextPipeline)."
        )


def _pre_hook(state: _State):
    def hook(module, args, kwargs):
        manager = state.head.state_manager
        open_cond_context(state, module, manager)
        if not manager._state_cache:  # fresh FBC state: diffusers reset it after the previous pipeline call
            state.decisions.clear()

    return hook


def _post_hook(state: _State):
    def hook(module, args, kwargs, output):
        manager = state.head.state_manager
        try:
            if output is None:  # the forward raised: drop the call's partial state so the next call starts clean
                state.decisions.clear()
                module._reset_stateful_cache()
            elif manager._context is not None and manager.context.name == "cond":
                state.decisions.append(bool(manager.get_state().should_compute))
        finally:
            close_own_context(state)

    return hook


def _state(pipe, what: str) -> _State:
    return state_of(pipe, KIND, f"{what}: the first-block cache is not enabled on this pipeline. "
                                "Fix: apply_first_block_cache(pipe, ...).")
