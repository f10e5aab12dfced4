"""cache-dit DBCache adapter on tiny dev/Kontext pipelines (CPU): config mapping, refusals, engagement, exact restore.

The tiny transformer has 3 blocks (1 double + 2 single), so these tests use F1B0 / F1B1 with 10 steps and 2
warm-up steps. Random weights give relative residual diffs of ~0.4-0.9 per step: threshold 9 caches every step
after warm-up, 1e-6 caches none.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from root_conftest import block_cache_fixtures

from fluxperf import optional
from fluxperf.errors import FluxperfError, RecipeError, UnavailableError
from fluxperf.ladder import recipe_from, rung
from fluxperf.recipe import CacheDitConfig

pytest.importorskip("cache_dit", reason="needs cache-dit: pip install 'fluxperf[cache-dit]'")

from fluxperf.steps.caching.cache_dit import (  # noqa: E402
    COMPILE_HINT,
    apply_cache_dit,
    cache_dit_stats,
    dbcache_config,
    disable_cache_dit,
    is_cache_dit_enabled,
    refresh_cache_dit,
)

STEPS, WARMUP = 10, 2
LOOSE, TIGHT = 9.0, 1e-6


def _cfg(**kw) -> CacheDitConfig:
    base = dict(enabled=True, Fn=1, Bn=0, residual_diff_threshold=LOOSE, max_warmup_steps=WARMUP)
    return CacheDitConfig(**{**base, **kw})


tiny, clean = block_cache_fixtures(STEPS)


# -- configuration ----------------------------------------------------------------------------------------
def test_config_maps_every_field():
    cfg = CacheDitConfig(enabled=True, Fn=8, Bn=0, residual_diff_threshold=0.2, max_warmup_steps=4,
                         max_cached_steps=10, max_continuous_cached_steps=3)
    db = dbcache_config(cfg, 28)
    assert (db.Fn_compute_blocks, db.Bn_compute_blocks, db.residual_diff_threshold) == (8, 0, 0.2)
    assert (db.max_warmup_steps, db.max_cached_steps, db.max_continuous_cached_steps) == (4, 10, 3)
    assert db.num_inference_steps == 28
    assert db.strify() == "DBCache_F8B0_W4I1M10MC3_R0.2_N28"


@pytest.mark.parametrize("name, expected", [
    ("cache_dit", "DBCache_F12B12_W8I1M0MC0_R0.12_N28"),
    ("cache_dit_f8b0", "DBCache_F8B0_W8I1M0MC0_R0.12_N28"),
    ("cache_dit_f1b0", "DBCache_F1B0_W8I1M0MC0_R0.12_N28"),
])
def test_ladder_rungs_map_to_dbcache(name, expected):
    assert dbcache_config(rung(name).cache_dit, 28).strify() == expected


def test_compile_hint_is_regional_fullgraph():
    assert COMPILE_HINT["scope"] == "regional" and COMPILE_HINT["fullgraph"] is True


# -- refusals ---------------------------------------------------------------------------------------------
def test_schnell_is_refused_by_name(clean):
    _, pipe, _, _ = clean
    with pytest.raises(RecipeError, match=r"schnell.*4 steps.*warm-up.*Fix: use variant 'dev' or 'kontext'"):
        apply_cache_dit(pipe, _cfg(), variant="schnell", num_inference_steps=4)
    assert not is_cache_dit_enabled(pipe)


def test_schnell_pipeline_is_refused_even_if_called_dev():
    from fluxperf.model.build import build_pipeline

    pipe = build_pipeline("schnell", "tiny", text_encoders=False, dtype="float32")
    with pytest.raises(RecipeError, match="schnell"):
        apply_cache_dit(pipe, _cfg(), variant="dev", num_inference_steps=28)


@pytest.mark.parametrize("spec, match", [
    ({"base": "export", "cache_dit": {"enabled": True}}, "export.enabled=True with cache_dit"),
    ({"base": "cache_dit", "first_block_cache": {"enabled": True}}, "enable only one"),
    ({"base": "cache_dit", "compile": {"mode": "reduce-overhead"}}, "CUDA graphs"),
])
def test_recipe_refuses_incompatible_caching(spec, match):
    with pytest.raises(RecipeError, match=match):
        recipe_from(spec)


def test_warmup_must_leave_steps_to_cache(clean):
    _, pipe, _, _ = clean
    with pytest.raises(RecipeError, match="num_inference_steps=8 <= warm-up steps 8"):
        apply_cache_dit(pipe, _cfg(max_warmup_steps=8), variant="dev", num_inference_steps=8)


def test_fn_plus_bn_must_leave_middle_blocks(clean):
    _, pipe, _, _ = clean
    with pytest.raises(RecipeError, match=r"Fn=12 \+ cache_dit.Bn=12 >= 3 transformer blocks"):
        apply_cache_dit(pipe, _cfg(Fn=12, Bn=12), variant="dev", num_inference_steps=STEPS)


def test_refuses_a_compiled_transformer(clean):
    _, pipe, _, _ = clean
    block = pipe.transformer.transformer_blocks[0]
    block.compile()  # lazy: nothing is compiled until a call
    try:
        with pytest.raises(RecipeError, match="before torch.compile"):
            apply_cache_dit(pipe, _cfg(), variant="dev", num_inference_steps=STEPS)
    finally:
        block._compiled_call_impl = None
    assert not is_cache_dit_enabled(pipe)


def test_missing_cache_dit_gives_install_hint(clean, monkeypatch):
    _, pipe, _, _ = clean
    fake = optional.OptionalPackage("cache-dit", ("cache_dit_not_installed_xyz",), optional.install_hint("cache_dit"))
    monkeypatch.setitem(optional.PACKAGES, "cache_dit", fake)
    optional.find_module.cache_clear()
    try:
        with pytest.raises(UnavailableError, match=r"cache-dit is not available.*pip install 'fluxperf\[cache-dit\]'"):
            apply_cache_dit(pipe, _cfg(), variant="dev", num_inference_steps=STEPS)
    finally:
        optional.find_module.cache_clear()
    assert not is_cache_dit_enabled(pipe)


def test_stats_without_cache_is_an_error(clean):
    with pytest.raises(FluxperfError, match="not enabled"):
        cache_dit_stats(clean[1])


def test_disabled_config_changes_nothing(clean):
    _, pipe, _, _ = clean
    assert apply_cache_dit(pipe, CacheDitConfig(), variant="dev", num_inference_steps=STEPS)["enabled"] is False
    assert not is_cache_dit_enabled(pipe)


# -- engagement and restore --------------------------------------------------------------------------------
def test_loose_threshold_caches_every_step_after_warmup(clean):
    variant, pipe, run, ref = clean
    report = apply_cache_dit(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    assert report["config"] == "DBCache_F1B0_W2I1M0MC0_R9.0_N10" and report["max_cacheable_steps"] == STEPS - WARMUP
    out = run()
    stats = cache_dit_stats(pipe)
    assert stats["cached_step_indices"] == list(range(WARMUP, STEPS))
    assert (stats["cached_steps"], stats["executed_steps"], stats["total_steps"]) == (8, 2, 10)
    assert np.abs(out - ref).max() > 1e-3  # the cache really changed the computation


def test_tiny_threshold_caches_nothing_and_matches_uncached(clean):
    variant, pipe, run, ref = clean
    apply_cache_dit(pipe, _cfg(Bn=1, residual_diff_threshold=TIGHT), variant=variant, num_inference_steps=STEPS)
    out = run()
    assert cache_dit_stats(pipe)["cached_steps"] == 0
    np.testing.assert_array_equal(out, ref)


def test_intermediate_threshold_caches_some_steps(clean):
    variant, pipe, run, _ = clean
    apply_cache_dit(pipe, _cfg(residual_diff_threshold=0.8), variant=variant, num_inference_steps=STEPS)
    run()
    stats = cache_dit_stats(pipe)
    assert 0 < stats["cached_steps"] < STEPS - WARMUP
    assert all(d >= 0 for d in stats["residual_diffs"].values()) and stats["residual_diffs"]


def test_disable_restores_uncached_output_and_pipeline(clean):
    variant, pipe, run, ref = clean
    call_before, order_before = type(pipe).__call__, list(pipe.transformer._modules)
    apply_cache_dit(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    run()
    disable_cache_dit(pipe)
    np.testing.assert_array_equal(run(), ref)
    assert type(pipe).__call__ is call_before
    assert list(pipe.transformer._modules) == order_before
    assert "forward" not in pipe.transformer.__dict__ and not pipe.transformer._forward_pre_hooks
    with pytest.raises(FluxperfError, match="not enabled"):
        disable_cache_dit(pipe)


def test_other_step_count_raises_until_refreshed(clean):
    variant, pipe, run, _ = clean
    apply_cache_dit(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    with pytest.raises(RecipeError, match=r"num_inference_steps=10 but the pipeline runs 12 steps.*refresh_cache_dit"):
        run(12)
    report = refresh_cache_dit(pipe, 12)
    assert report["config"].endswith("_N12") and report["max_cacheable_steps"] == 12 - WARMUP
    run(12)
    stats = cache_dit_stats(pipe)
    assert stats["total_steps"] == 12 and stats["cached_step_indices"] == list(range(WARMUP, 12))


def test_enabling_twice_is_refused(clean):
    variant, pipe, _, _ = clean
    apply_cache_dit(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    with pytest.raises(RecipeError, match="already enabled"):
        apply_cache_dit(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)


# -- the one compile case: dynamo (backend="eager") decides graph breaks, no Inductor needed -------------------
@pytest.mark.slow
def test_compile_hints_hold_under_dynamo(tiny_image_runner):
    """cache-dit: regional fullgraph=True compiles and matches eager. FBC: fullgraph=True fails, False matches."""
    from fluxperf.recipe import FirstBlockCacheConfig
    from fluxperf.steps.caching.first_block import COMPILE_HINT as FBC_HINT
    from fluxperf.steps.caching.first_block import (
        apply_first_block_cache,
        disable_first_block_cache,
        first_block_cache_stats,
    )

    pipe, run = tiny_image_runner("dev", STEPS)
    steps = 4  # step 0 computed, steps 1-3 cached (loose thresholds), all through compiled blocks
    cases = [
        (lambda: apply_cache_dit(pipe, _cfg(max_warmup_steps=1), variant="dev", num_inference_steps=steps),
         cache_dit_stats, disable_cache_dit, COMPILE_HINT["fullgraph"]),
        (lambda: apply_first_block_cache(pipe, FirstBlockCacheConfig(enabled=True, threshold=4.9), variant="dev",
                                         num_inference_steps=steps),
         first_block_cache_stats, disable_first_block_cache, FBC_HINT["fullgraph"]),
    ]
    try:
        for enable, stats, disable, fullgraph in cases:
            enable()
            eager = run(steps)
            if not fullgraph:  # the hint says fullgraph=False because fullgraph=True fails: check that too
                _compile_blocks(pipe, True)
                with pytest.raises(torch._dynamo.exc.Unsupported, match="torch.compiler.disable"):
                    run(steps)
                _uncompile_blocks(pipe)
            _compile_blocks(pipe, fullgraph)
            np.testing.assert_array_equal(run(steps), eager)

            assert stats(pipe)["cached_step_indices"] == [1, 2, 3]
            _uncompile_blocks(pipe)
            disable(pipe)
    finally:
        _uncompile_blocks(pipe)


def _compile_blocks(pipe, fullgraph: bool) -> None:
    torch._dynamo.reset()
    pipe.transformer.compile_repeated_blocks(fullgraph=fullgraph, backend="eager")


def _uncompile_blocks(pipe) -> None:
    for module in pipe.transformer.modules():
        module._compiled_call_impl = None
    torch._dynamo.reset()
