"""diffusers' first-block cache through fluxperf.steps.caching.first_block on tiny dev/Kontext pipelines (CPU).

FBC computes step 0, then skips all blocks after the first whenever the first block's residual changed by
<= threshold (relative mean |diff|). Random tiny weights change it by ~0.4-0.9 per step: 4.9 caches every step
after step 0, 1e-6 none.
"""

from __future__ import annotations

import numpy as np
import pytest
from root_conftest import block_cache_fixtures

from fluxperf.errors import FluxperfError, RecipeError
from fluxperf.recipe import CacheDitConfig, FirstBlockCacheConfig
from fluxperf.steps.caching.first_block import (
    COMPILE_HINT,
    apply_first_block_cache,
    disable_first_block_cache,
    first_block_cache_stats,
    is_first_block_cache_enabled,
    teacache_available,
)

STEPS = 10
LOOSE, TIGHT = 4.9, 1e-6


def _cfg(threshold: float = LOOSE, kind: str = "first_block") -> FirstBlockCacheConfig:
    return FirstBlockCacheConfig(enabled=True, kind=kind, threshold=threshold)


tiny, clean = block_cache_fixtures(STEPS)


# -- refusals -------------------------------------------------------------------------------------------
def test_teacache_is_fluxperfs_own_not_this_modules(clean):
    _, pipe, _, _ = clean
    # diffusers 0.42.1 ships no TeaCache hook: fluxperf.steps.caching.teacache is fluxperf's (tests/test_teacache.py)
    assert not teacache_available()
    with pytest.raises(RecipeError, match=r"kind='teacache'. Fix: fluxperf.steps.caching.teacache.apply_teacache"):
        apply_first_block_cache(pipe, _cfg(kind="teacache"), variant="dev", num_inference_steps=STEPS)
    assert not is_first_block_cache_enabled(pipe) and not pipe.transformer.is_cache_enabled


def test_schnell_is_refused(clean):
    _, pipe, _, _ = clean
    with pytest.raises(RecipeError, match=r"first_block_cache with variant='schnell'.*4 steps.*Fix: use variant 'dev'"):
        apply_first_block_cache(pipe, _cfg(), variant="schnell", num_inference_steps=4)
    assert not pipe.transformer.is_cache_enabled


def test_one_step_leaves_nothing_to_cache(clean):
    with pytest.raises(RecipeError, match="num_inference_steps=1 <= warm-up steps 1"):
        apply_first_block_cache(clean[1], _cfg(), variant="dev", num_inference_steps=1)


def test_both_caches_are_refused_either_way(clean):
    pytest.importorskip("cache_dit", reason="needs cache-dit: pip install 'fluxperf[cache-dit]'")
    from fluxperf.steps.caching.cache_dit import apply_cache_dit, disable_cache_dit

    variant, pipe, _, _ = clean
    apply_first_block_cache(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    with pytest.raises(RecipeError, match=r"diffusers cache \(FirstBlockCacheConfig\).*enable only one"):
        apply_cache_dit(pipe, CacheDitConfig(enabled=True, Fn=1, Bn=0, max_warmup_steps=2), variant=variant,
                        num_inference_steps=STEPS)
    disable_first_block_cache(pipe)
    apply_cache_dit(pipe, CacheDitConfig(enabled=True, Fn=1, Bn=0, max_warmup_steps=2), variant=variant,
                    num_inference_steps=STEPS)
    with pytest.raises(RecipeError, match="cache_dit enabled on the same pipeline.*enable only one"):
        apply_first_block_cache(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    disable_cache_dit(pipe)
    assert not pipe.transformer.is_cache_enabled


def test_refuses_a_compiled_transformer(clean):
    _, pipe, _, _ = clean
    block = pipe.transformer.single_transformer_blocks[0]
    block.compile()  # lazy: nothing is compiled until a call
    try:
        with pytest.raises(RecipeError, match="before torch.compile"):
            apply_first_block_cache(pipe, _cfg(), variant="dev", num_inference_steps=STEPS)
    finally:
        block._compiled_call_impl = None
    assert not pipe.transformer.is_cache_enabled


def test_disabled_config_and_stats_without_cache(clean):
    _, pipe, _, _ = clean
    assert apply_first_block_cache(pipe, FirstBlockCacheConfig(), variant="dev", num_inference_steps=STEPS) == {
        "enabled": False, "kind": "first_block"}
    with pytest.raises(FluxperfError, match="not enabled"):
        first_block_cache_stats(pipe)


def test_compile_hint_is_regional_without_fullgraph():
    assert COMPILE_HINT["scope"] == "regional" and COMPILE_HINT["fullgraph"] is False


# -- engagement, counts and restore ---------------------------------------------------------------------------
def test_loose_threshold_caches_every_step_after_the_first(clean):
    variant, pipe, run, ref = clean
    report = apply_first_block_cache(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    assert report["head_block"] == "transformer_blocks.0" and report["tail_block"] == "single_transformer_blocks.1"
    out = run()
    stats = first_block_cache_stats(pipe)
    assert stats["cached_step_indices"] == list(range(1, STEPS))
    assert (stats["cached_steps"], stats["executed_steps"], stats["total_steps"]) == (STEPS - 1, 1, STEPS)
    assert np.abs(out - ref).max() > 1e-3
    run(6)  # counts are per call, not accumulated
    assert first_block_cache_stats(pipe)["total_steps"] == 6


def test_tiny_threshold_caches_nothing_and_matches_uncached(clean):
    variant, pipe, run, ref = clean
    apply_first_block_cache(pipe, _cfg(TIGHT), variant=variant, num_inference_steps=STEPS)
    out = run()
    assert first_block_cache_stats(pipe)["cached_steps"] == 0
    np.testing.assert_array_equal(out, ref)


def test_disable_restores_uncached_output(clean):
    variant, pipe, run, ref = clean
    apply_first_block_cache(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    run()
    disable_first_block_cache(pipe)
    np.testing.assert_array_equal(run(), ref)
    t = pipe.transformer
    assert not t.is_cache_enabled and not t._forward_hooks and not t._forward_pre_hooks
    with pytest.raises(FluxperfError, match="not enabled"):
        disable_first_block_cache(pipe)


def test_counts_agree_with_cache_dit_f1b0(clean):
    """Same decision rule (relative mean |diff| of the first block's residual): cache-dit F1B0 with one warm-up
    step must cache the same steps and give the same image; this checks fluxperf's FBC counter independently."""
    pytest.importorskip("cache_dit", reason="needs cache-dit: pip install 'fluxperf[cache-dit]'")
    from fluxperf.steps.caching.cache_dit import apply_cache_dit, cache_dit_stats, disable_cache_dit

    variant, pipe, run, _ = clean
    apply_first_block_cache(pipe, _cfg(0.8), variant=variant, num_inference_steps=STEPS)
    fbc_image, fbc = run(), first_block_cache_stats(pipe)
    disable_first_block_cache(pipe)
    apply_cache_dit(pipe, CacheDitConfig(enabled=True, Fn=1, Bn=0, residual_diff_threshold=0.8, max_warmup_steps=1),
                    variant=variant, num_inference_steps=STEPS)
    dit_image, dit = run(), cache_dit_stats(pipe)
    disable_cache_dit(pipe)
    assert 0 < fbc["cached_steps"] < STEPS - 1
    assert fbc["cached_step_indices"] == dit["cached_step_indices"]
    np.testing.assert_allclose(fbc_image, dit_image, atol=1e-6)


def test_works_after_cache_dit_was_disabled(clean):
    """cache-dit reorders the transformer's child modules; FBC picks head/tail in that order (regression)."""
    pytest.importorskip("cache_dit", reason="needs cache-dit: pip install 'fluxperf[cache-dit]'")
    from fluxperf.steps.caching.cache_dit import apply_cache_dit, disable_cache_dit

    variant, pipe, run, _ = clean
    apply_cache_dit(pipe, CacheDitConfig(enabled=True, Fn=1, Bn=0, max_warmup_steps=2), variant=variant,
                    num_inference_steps=STEPS)
    run()
    disable_cache_dit(pipe)
    report = apply_first_block_cache(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    assert report["head_block"] == "transformer_blocks.0"
    run()
    assert first_block_cache_stats(pipe)["cached_steps"] == STEPS - 1


def test_kontext_needs_the_context_fluxperf_opens(tiny_image_runner):
    """diffusers' FluxKontextPipeline opens no cache_context, so plain diffusers FBC fails on it; fluxperf's works
    (covered by the kontext-parametrized tests above). Drop the workaround when this starts failing."""
    from diffusers.hooks import FirstBlockCacheConfig as DiffusersFBC

    pipe, run = tiny_image_runner("kontext", STEPS)
    pipe.transformer.enable_cache(DiffusersFBC(threshold=0.5))
    with pytest.raises(ValueError, match="No cache context is set"):
        run(2)
    pipe.transformer.disable_cache()
