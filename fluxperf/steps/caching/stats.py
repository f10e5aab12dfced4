"""Which block cache is on a pipeline, and how many steps its last call served from the cache.

One entry point for the ladder and the benchmarks, whichever cache (cache-dit DBCache, diffusers' first-block
cache or fluxperf's TeaCache) apply() enabled: it reads fluxperf.steps.caching.common's record and calls the public
functions of fluxperf.steps.caching.cache_dit / .first_block / .teacache. Importing this module imports neither
cache-dit nor diffusers' hooks.
"""

from __future__ import annotations

from typing import Any


def active_cache(pipe) -> str | None:
    """"cache_dit", "first_block", "teacache" or None: the block cache enabled on `pipe` by fluxperf
    (fluxperf.steps.caching.common)."""
    from fluxperf.steps.caching.common import enabled_cache

    return enabled_cache(pipe)


def last_call_cache_stats(pipe) -> dict[str, Any] | None:
    """Cache statistics of the pipeline's last call, or None when no block cache is enabled.

    Returns:
        {"kind": "cache_dit" | "first_block" | "teacache", "cached_steps": int, "executed_steps": int,
         "total_steps": int, "cached_step_indices": [int, ...]} (plus the cache's own fields, e.g. residual_diffs,
         TeaCache's rel_l1).

    Example:
        >>> stats = last_call_cache_stats(pipe)  # doctest: +SKIP
        >>> stats["cached_steps"], stats["total_steps"]  # doctest: +SKIP
        (6, 28)
    """
    kind = active_cache(pipe)
    if kind is None:
        return None
    return {"kind": kind, **_module(kind).stats(pipe)}


def disable_active_cache(pipe) -> str | None:
    """Disable whichever block cache fluxperf enabled on `pipe`; returns its kind (None: there was none).

    Only the cache: the other stages of an apply() stay (fluxperf.apply.remove undoes them all, this included).

    cache-dit patches the pipeline *class*, so a cache left on one pipeline refuses every other pipeline of that
    class in the process: whoever enables a cache for one measurement disables it afterwards.

    Example:
        >>> disable_active_cache(pipe)  # doctest: +SKIP
        'cache_dit'
    """
    kind = active_cache(pipe)
    if kind is not None:
        _module(kind).disable(pipe)
    return kind


class _Functions:
    def __init__(self, stats, disable):
        self.stats, self.disable = stats, disable


def _module(kind: str) -> _Functions:
    """The stats and disable functions of the cache `kind` (its module imported only when that cache is on)."""
    if kind == "cache_dit":
        from fluxperf.steps.caching.cache_dit import cache_dit_stats, disable_cache_dit

        return _Functions(cache_dit_stats, disable_cache_dit)
    if kind == "first_block":
        from fluxperf.steps.caching.first_block import disable_first_block_cache, first_block_cache_stats

        return _Functions(first_block_cache_stats, disable_first_block_cache)
    from fluxperf.steps.caching.teacache import disable_teacache, teacache_stats

    return _Functions(teacache_stats, disable_teacache)
