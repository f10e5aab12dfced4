"""cache-dit DBCache on FLUX pipelines: the only module that imports `cache_dit`.

DBCache runs the first `Fn` of FLUX's 57 blocks (19 double + 38 single, one unified list) every step, compares
their residual with the last fully computed step (relative L1), and when the change is below
`residual_diff_threshold` reuses the cached residual of the middle blocks, then runs the last `Bn` blocks.
The first `max_warmup_steps` steps are always computed.

Rules enforced here, with the checks both block caches share from fluxperf.steps.caching.common (the Recipe refuses
export + caching, both caches, and CUDA-graph compile modes):
* not for schnell: 4 steps, fewer than the warm-up steps, so nothing could be cached;
* before torch.compile: apply on an uncompiled transformer, then compile. Use regional compile,
  `transformer.compile_repeated_blocks(fullgraph=True)`: cache-dit keeps its decisions in Python around the
  blocks, so each block is still one full graph. Whole-model compile with fullgraph=True fails (cache-dit's
  forward wrapper calls `unittest.mock.patch.object`, which dynamo refuses); with fullgraph=False it breaks
  the graph around every cache decision. See COMPILE_HINT.
* the step count is part of the cache schedule: a call with another step count raises (cache-dit would
  otherwise silently restart its context mid-run); `refresh_cache_dit(pipe, n)` re-applies for n steps.

Example:
    >>> from fluxperf.recipe import CacheDitConfig
    >>> report = apply_cache_dit(pipe, CacheDitConfig(enabled=True), variant="dev",
    ...                          num_inference_steps=28)  # doctest: +SKIP
    >>> image = pipe(..., num_inference_steps=28).images[0]  # doctest: +SKIP
    >>> cache_dit_stats(pipe)["cached_steps"]  # doctest: +SKIP
    11
    >>> disable_cache_dit(pipe)  # doctest: +SKIP

Through apply(), fluxperf.remove(pipe) disables it with the other stages (disable_cache_dit stays for direct use).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from fluxperf.errors import FluxperfError, RecipeError
from fluxperf.optional import require
from fluxperf.steps.caching.common import (
    attach,
    check_not_compiled,
    check_steps,
    check_variant,
    detach,
    enabled_cache,
    pipeline_class_patched,
    state_of,
    step_stats,
)

# How to torch.compile a transformer that carries cache-dit (checked with dynamo on CPU, see module doc).
COMPILE_HINT = {"scope": "regional", "fullgraph": True,
                "why": "cache-dit decides in eager Python between blocks; each repeated block compiles as one "
                       "full graph. Whole-model fullgraph=True fails on cache-dit's mock.patch forward wrapper."}

KIND = "cache_dit"  # this cache's name in fluxperf.steps.caching.common (and in cache_stats' reports)


@dataclass
class _State:
    """What apply_cache_dit did to a pipeline, kept on it so disable/stats/refresh can undo or read it."""

    cfg: Any
    num_inference_steps: int
    variant: str
    module_order: list[str]
    report: dict = field(default_factory=dict)
    hook: Any = None


def flux_block_count(transformer) -> int:
    """FLUX blocks in cache-dit's unified list: double + single (57 for the real model)."""
    return len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)


# -- public API ----------------------------------------------------------------------------------------------
def dbcache_config(cfg, num_inference_steps: int):
    """Map fluxperf's CacheDitConfig to cache-dit's DBCacheConfig.

    Args:
        cfg: fluxperf.recipe.CacheDitConfig.
        num_inference_steps: steps of the calls to come.

    Example:
        >>> dbcache_config(CacheDitConfig(Fn=8, Bn=0), 28).strify()  # doctest: +SKIP
        'DBCache_F8B0_W8I1M0MC0_R0.12_N28'
    """
    cache_dit = require("cache_dit")
    return cache_dit.DBCacheConfig(
        Fn_compute_blocks=cfg.Fn, Bn_compute_blocks=cfg.Bn, residual_diff_threshold=float(cfg.residual_diff_threshold),
        max_warmup_steps=cfg.max_warmup_steps, max_cached_steps=cfg.max_cached_steps,
        max_continuous_cached_steps=cfg.max_continuous_cached_steps, num_inference_steps=num_inference_steps,
    )


def apply_cache_dit(pipe, cfg, *, variant: str, num_inference_steps: int) -> dict:
    """Enable cache-dit DBCache on a FLUX pipeline (in place) and return a report.

    Args:
        pipe: FluxPipeline (dev) or FluxKontextPipeline, not yet compiled.
        cfg: fluxperf.recipe.CacheDitConfig; `enabled=False` changes nothing and reports so.
        variant: "dev" or "kontext" ("schnell" is refused).
        num_inference_steps: steps of every following call (a call with another count raises).

    A threshold >= 1 makes cache-dit cache every step after warm-up without measuring anything (its rule).

    Returns:
        {"enabled", "kind", "config" (cache-dit's strify string), "Fn", "Bn", "threshold", "max_warmup_steps",
         "max_cached_steps", "max_continuous_cached_steps", "num_inference_steps", "blocks",
         "max_cacheable_steps", "compile"}.

    Example:
        >>> apply_cache_dit(pipe, CacheDitConfig(enabled=True, Fn=8, Bn=0), variant="dev",
        ...                 num_inference_steps=28)["config"]  # doctest: +SKIP
        'DBCache_F8B0_W8I1M0MC0_R0.12_N28'
    """
    if not cfg.enabled:
        return {"enabled": False, "kind": "cache_dit"}
    cfg.validate()
    what = "cache_dit"
    check_variant(variant, pipe, what)
    check_steps(num_inference_steps, cfg.max_warmup_steps, what)
    _check_free(pipe, what)
    check_not_compiled(pipe.transformer, what)
    blocks = flux_block_count(pipe.transformer)
    if cfg.Fn + cfg.Bn >= blocks:
        raise RecipeError(
            f"cache_dit.Fn={cfg.Fn} + cache_dit.Bn={cfg.Bn} >= {blocks} transformer blocks: no middle block is left "
            f"to cache. Fix: Fn + Bn < {blocks} (F1B0 fits the tiny model's 3 blocks; F12B12, F8B0 fit FLUX.1's 57)."
        )
    state = _State(cfg=cfg, num_inference_steps=num_inference_steps, variant=variant,
                   module_order=list(pipe.transformer._modules))
    _enable(pipe, state)
    state.report = {
        "enabled": True, "kind": "cache_dit", "config": dbcache_config(cfg, num_inference_steps).strify(),
        "Fn": cfg.Fn, "Bn": cfg.Bn, "threshold": float(cfg.residual_diff_threshold),
        "max_warmup_steps": cfg.max_warmup_steps, "max_cached_steps": cfg.max_cached_steps,
        "max_continuous_cached_steps": cfg.max_continuous_cached_steps, "num_inference_steps": num_inference_steps,
        "blocks": blocks, "max_cacheable_steps": _max_cacheable(cfg, num_inference_steps), "compile": COMPILE_HINT,
    }
    return dict(state.report)


def cache_dit_stats(pipe) -> dict:
    """Cache statistics of the LAST pipeline call (cache-dit resets its context at every call).

    Returns:
        {"cached_steps": steps served from the cache, "executed_steps": steps whose blocks all ran
         (total - cached), "total_steps": transformer steps of the call, "cached_step_indices": [...],
         "residual_diffs": {step: relative mean |diff| of the Fn residual vs the last computed step; a step
         is cached when it is < threshold; thresholds >= 1 cache unconditionally and measure nothing},
         "num_inference_steps": configured}.

    Args:
        pipe: a pipeline prepared with apply_cache_dit.

    Example:
        >>> cache_dit_stats(pipe)["cached_step_indices"]  # doctest: +SKIP
        [8, 10, 11, 13]
    """
    state = _state(pipe, "cache_dit_stats")
    cache_dit = require("cache_dit")
    stats = [s for s in cache_dit.summary(pipe, logging=False) if s.cache_options]
    if len(stats) != 1:
        raise FluxperfError(
            f"cache_dit_stats: expected one cache context on the FLUX transformer, found {len(stats)}. "
            "Fix: leave CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS unset (one unified block list)."
        )
    s = stats[0]
    counts = step_stats(sorted(int(i) for i in s.cached_steps), int(s.accumulated_executed_steps),
                        state.num_inference_steps)
    # cache-dit logs -1.0 for "threshold >= 1: always cache, no diff computed"; keep real measurements only
    return {**counts, "residual_diffs": {int(k): float(v) for k, v in s.residual_diffs.items() if float(v) >= 0}}


def disable_cache_dit(pipe) -> None:
    """Remove cache-dit from the pipeline and restore the uncached forward path exactly.

    Besides cache_dit.disable_cache this undoes what cache-dit 1.5.3 leaves behind: its patched transformer
    forward (an instance attribute) and the order of the transformer's child modules, which its per-call
    `mock.patch.object` reshuffles (diffusers' first-block cache picks head/tail blocks in that order).

    Args:
        pipe: a pipeline prepared with apply_cache_dit (anything else raises FluxperfError).

    Example:
        >>> disable_cache_dit(pipe)  # doctest: +SKIP
    """
    state = _state(pipe, "disable_cache_dit")
    cache_dit = require("cache_dit")
    transformer = pipe.transformer
    if state.hook is not None:
        state.hook.remove()
    cache_dit.disable_cache(pipe)
    forward = transformer.__dict__.get("forward")
    if forward is not None and getattr(forward, "__module__", "").startswith("cache_dit"):
        del transformer.forward
    transformer.__dict__.pop("_is_patched", None)
    modules = transformer._modules
    order = [n for n in state.module_order if n in modules] + [n for n in modules if n not in state.module_order]
    transformer._modules = type(modules)((name, modules[name]) for name in order)
    detach(pipe, KIND)


def refresh_cache_dit(pipe, num_inference_steps: int) -> dict:
    """Re-apply the same cache-dit config for a new step count (pipeline contexts are not refreshable in
    cache-dit 1.5.3: its refresh_context only handles transformer-only contexts and skips pipelines).

    Works after regional compile: the blocks themselves are not modified by cache-dit.

    Args:
        pipe: a pipeline prepared with apply_cache_dit.
        num_inference_steps: the new step count.

    Example:
        >>> refresh_cache_dit(pipe, 50)["config"]  # doctest: +SKIP
        'DBCache_F12B12_W8I1M0MC0_R0.12_N50'
    """
    state = _state(pipe, "refresh_cache_dit")
    check_steps(num_inference_steps, state.cfg.max_warmup_steps, "cache_dit")
    disable_cache_dit(pipe)
    new = _State(cfg=state.cfg, num_inference_steps=num_inference_steps, variant=state.variant,
                 module_order=state.module_order)
    _enable(pipe, new)
    new.report = {**state.report, "num_inference_steps": num_inference_steps,
                  "config": dbcache_config(state.cfg, num_inference_steps).strify(),
                  "max_cacheable_steps": _max_cacheable(state.cfg, num_inference_steps)}
    return dict(new.report)


def is_cache_dit_enabled(pipe) -> bool:
    """True if apply_cache_dit enabled cache-dit on `pipe` (and disable_cache_dit has not run since)."""
    return enabled_cache(pipe) == KIND


# -- internals -----------------------------------------------------------------------------------------------
def _enable(pipe, state: _State) -> None:
    cache_dit = require("cache_dit")
    cache_dit.enable_cache(pipe, cache_config=dbcache_config(state.cfg, state.num_inference_steps))
    state.hook = pipe.transformer.register_forward_pre_hook(_step_guard(pipe, state.num_inference_steps))
    attach(pipe, KIND, state)


def _step_guard(pipe, expected: int):
    """Forward pre-hook: refuse a call whose step count differs from the configured one."""
    ref = weakref.ref(pipe)

    def hook(module, args):
        p = ref()
        steps = getattr(p, "_num_timesteps", None) if p is not None else None
        if steps is not None and steps != expected:
            raise RecipeError(
                f"cache_dit was applied for num_inference_steps={expected} but the pipeline runs {steps} steps: "
                "cache-dit would silently restart its schedule mid-run. "
                f"Fix: fluxperf.steps.caching.cache_dit.refresh_cache_dit(pipe, {steps}) before the call."
            )

    return hook


def _max_cacheable(cfg, steps: int) -> int:
    n = steps - cfg.max_warmup_steps
    return n if cfg.max_cached_steps < 0 else min(n, cfg.max_cached_steps)


def _check_free(pipe, what: str) -> None:
    cls = type(pipe)
    if is_cache_dit_enabled(pipe):
        raise RecipeError(f"{what}: cache-dit is already enabled on this pipeline. Fix: disable_cache_dit(pipe) first.")
    if pipeline_class_patched(cls):
        raise RecipeError(
            f"{what}: cache-dit is already enabled on another {cls.__name__} in this process (it patches the "
            "pipeline class's __call__). Fix: disable it there first (fluxperf.steps.caching.cache_dit.disable_cache_dit)."
        )
    if getattr(pipe.transformer, "is_cache_enabled", False):
        raise RecipeError(
            f"{what} with a diffusers cache ({type(pipe.transformer._cache_config).__name__}) already enabled on the "
            "transformer: both cache the blocks and would fight over them. Fix: enable only one "
            "(fluxperf.steps.caching.first_block.disable_first_block_cache)."
        )
    other = enabled_cache(pipe)
    if other is not None:  # TeaCache's hooks are fluxperf's own: the transformer's is_cache_enabled does not see them
        raise RecipeError(f"{what} with the {other} cache enabled on the same pipeline: both cache the blocks and "
                          "would fight over them. Fix: enable only one (fluxperf.steps.caching.stats.disable_active_cache).")


def _state(pipe, what: str) -> _State:
    return state_of(pipe, KIND, f"{what}: cache-dit is not enabled on this pipeline. "
                                "Fix: apply_cache_dit(pipe, ...) first.")
