"""Block caches after an aborted pipeline call (CPU, tiny dev/Kontext): the next call starts from clean state.

A call that raises out of `callback_on_step_end` (a user abort, a timeout, a cancelled request) skips diffusers'
end-of-call reset (`maybe_free_model_hooks`), so a cache that resets only there serves the next call from the
aborted call's residuals and counts its steps. Each cache fluxperf enables must give the same image and stats
after an aborted call as on a fresh pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxperf.recipe import CacheDitConfig, FirstBlockCacheConfig
from fluxperf.steps.caching.stats import disable_active_cache, last_call_cache_stats

STEPS, ABORT_AT = 6, 2
# random tiny weights change the first block's residual by ~0.9-1.15 per step: these cache some steps, not all
THRESHOLD = {"first_block": 1.0, "cache_dit": 0.95}


class Abort(Exception):
    """What the user's callback raises to stop a call."""


def _abort_at(step: int):
    def callback(pipe, i, t, kwargs):
        if i == step:
            raise Abort(f"stopped at step {i}")
        return kwargs

    return callback


def _interrupt_at(step: int):
    def callback(pipe, i, t, kwargs):
        if i == step:
            pipe._interrupt = True  # diffusers' own way: the loop skips the remaining steps, the call completes
        return kwargs

    return callback


def _runner(variant: str):
    from fluxperf.model.build import build_pipeline

    pipe = build_pipeline(variant, "tiny", text_encoders=False, dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=g), "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}
    extra = {}
    if variant == "kontext":
        from PIL import Image

        pixels = np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)
        extra = {"image": Image.fromarray(pixels), "max_area": 64 * 64, "_auto_resize": False}

    def run(**kw):
        return pipe(height=64, width=64, num_inference_steps=STEPS, guidance_scale=3.5, output_type="np",
                    generator=torch.Generator().manual_seed(0), **embeds, **extra, **kw).images

    return pipe, run


def _enable(kind: str, pipe, variant: str) -> None:
    if kind == "first_block":
        from fluxperf.steps.caching.first_block import apply_first_block_cache

        apply_first_block_cache(pipe, FirstBlockCacheConfig(enabled=True, threshold=THRESHOLD[kind]), variant=variant,
                                num_inference_steps=STEPS)
    else:
        pytest.importorskip("cache_dit", reason="needs cache-dit: pip install 'fluxperf[cache-dit]'")
        from fluxperf.steps.caching.cache_dit import apply_cache_dit

        apply_cache_dit(pipe, CacheDitConfig(enabled=True, Fn=1, Bn=0, residual_diff_threshold=THRESHOLD[kind],
                                             max_warmup_steps=1), variant=variant, num_inference_steps=STEPS)


@pytest.fixture(scope="module", params=["dev", "kontext"])
def fresh(request):
    """(variant, image and stats of a full call on a freshly cached pipeline) per cache kind, computed lazily."""
    variant, done = request.param, {}

    def get(kind: str):
        if kind not in done:
            pipe, run = _runner(variant)
            _enable(kind, pipe, variant)
            done[kind] = (run(), last_call_cache_stats(pipe))
            disable_active_cache(pipe)
        return done[kind]

    return variant, get


@pytest.mark.parametrize("kind", ["first_block", "cache_dit"])
@pytest.mark.parametrize("how", ["raise", "interrupt"])
def test_call_after_an_aborted_call_equals_a_fresh_pipeline(fresh, kind, how):
    variant, get = fresh
    ref_image, ref_stats = get(kind)
    assert ref_stats["total_steps"] == STEPS and 0 < ref_stats["cached_steps"] < STEPS - 1  # the cache engages
    pipe, run = _runner(variant)
    _enable(kind, pipe, variant)
    try:
        if how == "raise":
            with pytest.raises(Abort):
                run(callback_on_step_end=_abort_at(ABORT_AT))
        else:
            run(callback_on_step_end=_interrupt_at(ABORT_AT))
        image, stats = run(), last_call_cache_stats(pipe)
    finally:
        disable_active_cache(pipe)
    assert "check_inputs" not in pipe.__dict__  # fluxperf's call-start reset is gone with the cache
    assert stats == ref_stats  # total_steps == STEPS: the aborted call's steps are not counted
    np.testing.assert_array_equal(image, ref_image)
