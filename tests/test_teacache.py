"""TeaCache (fluxperf.steps.caching.teacache) on tiny dev/Kontext pipelines (CPU).

Random tiny weights change the first block's modulated input by a relative L1 of ~0.14-0.32 per step, which the
published polynomial rescales to ~0.2-0.3: threshold 0.05 reuses nothing, 1.0 some steps, 4.9 every step it may
(all but the first and the last).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from root_conftest import block_cache_fixtures

from fluxperf.apply import apply, remove
from fluxperf.errors import FluxperfError, RecipeError
from fluxperf.ladder import recipe_from, rung
from fluxperf.recipe import FirstBlockCacheConfig
from fluxperf.steps.caching.stats import active_cache, last_call_cache_stats
from fluxperf.steps.caching.teacache import (
    COMPILE_HINT,
    FLUX_COEFFICIENTS,
    apply_teacache,
    disable_teacache,
    is_teacache_enabled,
    rescale,
    teacache_stats,
)

STEPS = 10
NONE, SOME, ALL = 0.05, 1.0, 4.9
# TeaCache4FLUX/teacache_flux.py, as published (numpy.poly1d order): checked here independently of the module
PUBLISHED = [4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01]


def _cfg(threshold: float = ALL) -> FirstBlockCacheConfig:
    return FirstBlockCacheConfig(enabled=True, kind="teacache", threshold=threshold)


tiny, clean = block_cache_fixtures(STEPS)


def _enable(pipe, variant, threshold=ALL, steps=STEPS) -> dict:
    return apply_teacache(pipe, _cfg(threshold), variant=variant, num_inference_steps=steps)


# -- the published rule, re-derived here from the block's own inputs ------------------------------------------------
def _published_decisions(indicators: list[torch.Tensor], threshold: float) -> list[bool]:
    """TeaCache4FLUX's decision per step (True: compute) from the modulated inputs m_0..m_{n-1}."""
    poly, acc, out = np.poly1d(PUBLISHED), 0.0, []
    for i, m in enumerate(indicators):
        if i in (0, len(indicators) - 1):
            compute, acc = True, 0.0
        else:
            prev = indicators[i - 1]
            acc += poly(((m - prev).abs().mean() / prev.abs().mean()).item())
            compute = acc >= threshold
            acc = 0.0 if compute else acc
        out.append(compute)
    return out


def test_coefficients_are_the_published_ones():
    assert list(FLUX_COEFFICIENTS) == PUBLISHED
    for x in (0.0, 0.1, 0.2, 0.5, 1.0):
        assert rescale(x) == pytest.approx(np.poly1d(PUBLISHED)(x), rel=1e-12)


@pytest.mark.parametrize("threshold", [SOME, ALL])
def test_decisions_follow_the_published_rule(clean, threshold):
    """The indicator is recomputed from what transformer_blocks[0] was called with (a torch pre-hook runs before
    diffusers' hooked forward), so the rule, the indicator and the first/last steps are checked from outside."""
    variant, pipe, run, _ = clean
    head = pipe.transformer.transformer_blocks[0]
    seen = []

    def capture(module, args, kwargs):
        with torch.no_grad():
            seen.append(module.norm1(kwargs["hidden_states"], emb=kwargs["temb"])[0].clone())

    _enable(pipe, variant, threshold)
    handle = head.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    stats = teacache_stats(pipe)
    expected = _published_decisions(seen, threshold)
    assert [i for i, c in enumerate(expected) if not c] == stats["cached_step_indices"]
    assert stats["total_steps"] == STEPS and stats["executed_steps"] == sum(expected)
    assert stats["rel_l1"][0] is None and stats["rel_l1"][-1] is None  # first and last: always computed
    if threshold == ALL:
        assert stats["cached_step_indices"] == list(range(1, STEPS - 1))
    else:
        assert 0 < stats["cached_steps"] < STEPS - 2


def test_tiny_threshold_reuses_nothing_and_matches_uncached(clean):
    variant, pipe, run, ref = clean
    report = _enable(pipe, variant, NONE)
    assert (report["head_block"], report["tail_block"]) == ("transformer_blocks.0", "single_transformer_blocks.1")
    assert report["coefficients"] == PUBLISHED and report["max_cacheable_steps"] == STEPS - 2
    out = run()
    assert teacache_stats(pipe)["cached_steps"] == 0
    np.testing.assert_array_equal(out, ref)


def test_reused_steps_add_the_cached_residual(clean):
    """A reused step's transformer output is norm_out/proj_out of (hidden states entering block 0 + the residual
    of the last computed step), the residual being the last block's image output minus block 0's input."""
    variant, pipe, run, _ = clean
    t = pipe.transformer
    entering, leaving = [], []
    h1 = t.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, k: entering.append(k["hidden_states"].clone()), with_kwargs=True)
    h2 = t.norm_out.register_forward_pre_hook(lambda m, a: leaving.append(a[0].clone()))
    _enable(pipe, variant, SOME)
    try:
        run()
    finally:
        h1.remove()
        h2.remove()
    stats = teacache_stats(pipe)
    computed = [i for i in range(STEPS) if i not in stats["cached_step_indices"]]
    assert stats["cached_steps"] > 0
    for i in stats["cached_step_indices"]:
        last = max(c for c in computed if c < i)
        residual = leaving[last] - entering[last]
        torch.testing.assert_close(leaving[i], entering[i] + residual)


def test_disable_restores_the_uncached_output(clean):
    variant, pipe, run, ref = clean
    _enable(pipe, variant)
    assert np.abs(run() - ref).max() > 1e-3  # it engaged
    disable_teacache(pipe)
    np.testing.assert_array_equal(run(), ref)
    t = pipe.transformer
    assert not t._forward_hooks and not t._forward_pre_hooks and "check_inputs" not in pipe.__dict__
    assert all(not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks for m in t.modules())
    with pytest.raises(FluxperfError, match="TeaCache is not enabled"):
        disable_teacache(pipe)


def test_counts_are_per_call_and_follow_the_calls_step_count(clean):
    variant, pipe, run, _ = clean
    _enable(pipe, variant)
    run()
    run(6)  # the last step of THIS call (5) is computed, not step 9 of the configured count
    stats = last_call_cache_stats(pipe)
    assert stats["kind"] == "teacache" and active_cache(pipe) == "teacache"
    assert stats["total_steps"] == 6 and stats["cached_step_indices"] == [1, 2, 3, 4]
    assert stats["num_inference_steps"] == STEPS


# -- state resets at the start of every call --------------------------------------------------------------------------
class Abort(Exception):
    pass


def _call(pipe, variant, scale: float, **kw):
    """The pipeline's image for prompt embeddings scaled by `scale` (other inputs than run()'s)."""
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec, stand_in_prompt_embeds

    embeds = stand_in_prompt_embeds(ShapeSpec(variant, 64, 64, text_len=16), dims_of_pipeline(pipe), seed=1)
    extra = {}
    if variant == "kontext":
        from PIL import Image

        pixels = np.random.RandomState(1).randint(0, 255, (64, 64, 3), dtype=np.uint8)
        extra = {"image": Image.fromarray(pixels), "max_area": 64 * 64, "_auto_resize": False}
    return pipe(height=64, width=64, num_inference_steps=STEPS, guidance_scale=3.5, output_type="np",
                generator=torch.Generator().manual_seed(1), **{k: v * scale for k, v in embeds.items()},
                **extra, **kw).images


def _abort_at(step):
    def callback(pipe, i, t, kwargs):
        if i == step:
            raise Abort
        return kwargs

    return callback


def test_a_second_call_never_reuses_the_first_calls_residual(clean, tiny_image_runner):
    """An aborted call leaves its step counter and residual behind (diffusers' end-of-call reset never runs): the
    next call, with other inputs, must equal the same call on a fresh pipeline. Without fluxperf's start-of-call
    reset it does not (checked below), so this test can fail."""
    variant, pipe, run, _ = clean
    fresh, _ = tiny_image_runner(variant, STEPS)
    _enable(fresh, variant, SOME)
    expected, expected_stats = _call(fresh, variant, 2.0), teacache_stats(fresh)
    disable_teacache(fresh)

    _enable(pipe, variant, SOME)
    with pytest.raises(Abort):
        _call(pipe, variant, 1.0, callback_on_step_end=_abort_at(4))
    np.testing.assert_array_equal(_call(pipe, variant, 2.0), expected)
    assert teacache_stats(pipe) == expected_stats

    # the counterfactual: the same sequence without the reset at call start reuses the aborted call's state
    with pytest.raises(Abort):
        _call(pipe, variant, 1.0, callback_on_step_end=_abort_at(4))
    del pipe.check_inputs
    stale = _call(pipe, variant, 2.0)
    assert not np.array_equal(stale, expected)


# -- refusals ------------------------------------------------------------------------------------------------------
def test_schnell_and_too_few_steps_are_refused(clean):
    variant, pipe, _, _ = clean
    with pytest.raises(RecipeError, match="variant='schnell'"):
        apply_teacache(pipe, _cfg(), variant="schnell", num_inference_steps=4)
    with pytest.raises(RecipeError, match="num_inference_steps=2 <= warm-up steps 2"):
        _enable(pipe, variant, steps=2)
    assert not is_teacache_enabled(pipe)


def test_other_caches_and_a_compiled_transformer_are_refused(clean):
    variant, pipe, _, _ = clean
    from fluxperf.steps.caching.first_block import apply_first_block_cache

    _enable(pipe, variant)
    with pytest.raises(RecipeError, match="already enabled"):
        _enable(pipe, variant)
    with pytest.raises(RecipeError, match="with teacache enabled on the same pipeline.*enable only one"):
        apply_first_block_cache(pipe, FirstBlockCacheConfig(enabled=True), variant=variant, num_inference_steps=STEPS)
    disable_teacache(pipe)
    with pytest.raises(RecipeError, match="kind='teacache'.*apply_teacache"):
        apply_first_block_cache(pipe, _cfg(), variant=variant, num_inference_steps=STEPS)
    block = pipe.transformer.single_transformer_blocks[0]
    block.compile()  # lazy: nothing is compiled until a call
    try:
        with pytest.raises(RecipeError, match="before torch.compile"):
            _enable(pipe, variant)
    finally:
        block._compiled_call_impl = None
    assert not is_teacache_enabled(pipe)


# TeaCache's recipe refusals (export, fullgraph compile, CUDA-graph modes, a second cache) are in
# tests/test_recipe.py::test_incompatible_combinations_are_refused, with every other combination rule.


def test_rung_and_compiled_variant_validate():
    r = rung("teacache")
    assert (r.first_block_cache.kind, r.first_block_cache.threshold, r.compile.enabled) == ("teacache", 0.4, False)
    compiled = recipe_from({"base": "teacache", "compile": {"enabled": True, "fullgraph": False}})
    assert compiled.compile.scope == COMPILE_HINT["scope"] and not compiled.compile.fullgraph


def test_apply_enables_it_and_remove_takes_it_off(tiny_image_runner):
    pipe, run = tiny_image_runner("dev", STEPS)
    ref = run()
    stack = apply(pipe, {"dtype": "float32", "first_block_cache": {"enabled": True, "kind": "teacache",
                                                                  "threshold": ALL}},
                  num_inference_steps=STEPS, variant="dev")
    assert stack.step("first_block_cache")["kind"] == "teacache" and is_teacache_enabled(pipe)
    run()
    assert last_call_cache_stats(pipe)["cached_steps"] == STEPS - 2
    assert remove(pipe).undone == ("first_block_cache", "dtype")
    assert active_cache(pipe) is None
    np.testing.assert_array_equal(run(), ref)


# -- compile: dynamo (backend="eager") decides graph breaks, no Inductor needed ------------------------------------
@pytest.mark.slow
def test_compile_hint_holds_under_dynamo(tiny_image_runner):
    """fullgraph=True fails at the torch.compiler.disable'd decision; regional fullgraph=False matches eager."""
    pipe, run = tiny_image_runner("dev", STEPS)
    steps = 5
    _enable(pipe, "dev", ALL, steps=steps)
    eager, eager_stats = run(steps), teacache_stats(pipe)
    try:
        torch._dynamo.reset()
        pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        with pytest.raises(torch._dynamo.exc.Unsupported, match="torch.compiler.disable"):
            run(steps)
        _uncompile(pipe)
        pipe.transformer.compile_repeated_blocks(fullgraph=COMPILE_HINT["fullgraph"], backend="eager")
        np.testing.assert_array_equal(run(steps), eager)
        assert teacache_stats(pipe) == eager_stats and eager_stats["cached_step_indices"] == [1, 2, 3]
    finally:
        _uncompile(pipe)
        disable_teacache(pipe)


def _uncompile(pipe) -> None:
    for module in pipe.transformer.modules():
        module._compiled_call_impl = None
    torch._dynamo.reset()
