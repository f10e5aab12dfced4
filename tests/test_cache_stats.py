"""fluxperf.steps.caching.stats on tiny dev pipelines (CPU), and the ladder reporting steps served from the cache."""

from __future__ import annotations

import pytest

from fluxperf.errors import FluxperfError
from fluxperf.ladder import recipe_from
from fluxperf.optional import probe
from fluxperf.steps.caching import common as caching
from fluxperf.steps.caching.stats import active_cache, disable_active_cache, last_call_cache_stats


# -- fluxperf.steps.caching.common: the one slot both caches record themselves in (no cache package needed) ---------------------
class _Pipe:
    """A stand-in: the slot only needs attributes."""


def test_one_slot_records_the_one_enabled_cache():
    pipe = _Pipe()
    assert caching.enabled_cache(pipe) is None and active_cache(pipe) is None
    caching.attach(pipe, "first_block", state := object())
    assert active_cache(pipe) == "first_block" and caching.state_of(pipe, "first_block", "unused") is state
    with pytest.raises(FluxperfError, match="the first_block cache is already enabled"):
        caching.attach(pipe, "cache_dit", object())
    with pytest.raises(FluxperfError, match="cache-dit is off"):
        caching.state_of(pipe, "cache_dit", "cache-dit is off")
    caching.detach(pipe, "cache_dit")  # not the recorded one: nothing happens
    assert active_cache(pipe) == "first_block"
    caching.detach(pipe, "first_block")
    assert active_cache(pipe) is None and last_call_cache_stats(pipe) is None and disable_active_cache(pipe) is None


def test_step_stats_shape():
    assert caching.step_stats([2, 3], 6, 6) == {"cached_steps": 2, "executed_steps": 4, "total_steps": 6,
                                                 "cached_step_indices": [2, 3], "num_inference_steps": 6}


def test_fbcache_no_longer_borrows_from_the_cache_dit_adapter():
    import ast
    import inspect

    from fluxperf.steps.caching import first_block as fbcache
    from fluxperf.steps.caching import stats as cache_stats

    tree = ast.parse(inspect.getsource(fbcache))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "fluxperf.steps.caching.cache_dit" not in imported and "fluxperf.steps.caching.common" in imported
    assert "_STATE_ATTR" not in inspect.getsource(cache_stats)  # public functions only


NEEDS_CACHE_DIT = pytest.mark.skipif(not probe("cache_dit"), reason="needs cache-dit: pip install 'fluxperf[cache-dit]'")

STEPS, WARMUP = 6, 2
# Tiny random-weight blocks change their residual by ~0.4-0.9 per step: 9.0 caches every step it may.
CACHE_DIT = {"enabled": True, "Fn": 1, "Bn": 0, "residual_diff_threshold": 9.0, "max_warmup_steps": WARMUP}
FBC = {"enabled": True, "threshold": 4.9}
TEACACHE = {"enabled": True, "kind": "teacache", "threshold": 4.9}


@pytest.fixture
def dev(tiny_image_runner):
    pipe, run = tiny_image_runner("dev", STEPS)
    yield pipe, run
    disable_active_cache(pipe)  # cache-dit patches the pipeline class: later pipelines need it off


def test_no_cache_gives_none(dev):
    pipe, run = dev
    run()
    assert active_cache(pipe) is None and last_call_cache_stats(pipe) is None


@pytest.mark.parametrize("step, config, kind, cached", [
    pytest.param("cache_dit", CACHE_DIT, "cache_dit", STEPS - WARMUP, marks=NEEDS_CACHE_DIT),  # all after warm-up
    ("first_block_cache", FBC, "first_block", STEPS - 1),  # every step after the first
    ("first_block_cache", TEACACHE, "teacache", STEPS - 2),  # every step but the first and the last
])
def test_stats_follow_the_cache_apply_enabled(dev, step, config, kind, cached):
    from fluxperf.apply import apply

    pipe, run = dev
    apply(pipe, recipe_from({"base": "bf16", step: config}), num_inference_steps=STEPS, variant="dev")
    assert active_cache(pipe) == kind
    run()
    stats = last_call_cache_stats(pipe)
    assert stats["kind"] == kind and stats["total_steps"] == STEPS
    assert stats["cached_steps"] == cached == len(stats["cached_step_indices"])
    assert disable_active_cache(pipe) == kind and active_cache(pipe) is None
    assert disable_active_cache(pipe) is None


def active_cache_on_class_is_off() -> bool:
    """cache-dit patches FluxPipeline itself while enabled; the ladder must leave the class as it found it."""
    from diffusers import FluxPipeline

    return not getattr(FluxPipeline, "_is_cached", False) and "_original_call" not in FluxPipeline.__dict__


@NEEDS_CACHE_DIT
def test_ladder_reports_cached_steps(monkeypatch, tmp_path):
    """The ladder's cache rungs report how many steps of their image came from the cache (here a CPU recipe
    stands in for cache_dit_f1b0, whose full stack needs a GPU)."""
    from fluxperf.measure import ladder_run
    from fluxperf.measure.ladder_report import table
    from fluxperf.measure.ladder_run import LadderOptions, run_ladder

    cpu = {name: recipe_from({"base": "bf16", "cache_dit": CACHE_DIT, "name": name})
           for name in ("cache_dit_f1b0", "cache_dit_f8b0")}  # two cache rungs in a row: the first must clean up
    real = ladder_run.recipe_from
    monkeypatch.setattr(ladder_run, "recipe_from", lambda name: cpu.get(name) or real(name))
    result = run_ladder(LadderOptions(variant="dev", device="cpu", size="tiny", steps=STEPS, rounds=1, warmup=0,
                                      step_rounds=1, rungs=("bf16", "cache_dit_f1b0", "cache_dit_f8b0")))
    by_rung = {r.rung: r for r in result.rungs}
    assert by_rung["bf16"].status == "ok" and by_rung["bf16"].cached_steps is None
    assert by_rung["cache_dit_f1b0"].status == "ok", by_rung["cache_dit_f1b0"].error
    assert by_rung["cache_dit_f1b0"].cached_steps == STEPS - WARMUP
    assert by_rung["cache_dit_f8b0"].status == "ok", by_rung["cache_dit_f8b0"].error
    assert by_rung["cache_dit_f1b0"].psnr_db < 200  # caching changed the image against the bf16 reference
    assert active_cache_on_class_is_off()
    df = table(result).set_index("rung")
    assert df.loc["cache_dit_f1b0", "cached_steps"] == STEPS - WARMUP


def test_ladder_reports_teacache_steps(monkeypatch):
    """The teacache rung through `fluxperf ladder` on CPU (bf16 tiny dev; a loose threshold stands in for the
    published 0.4, which random tiny weights need not reach)."""
    from fluxperf.measure import ladder_run
    from fluxperf.measure.ladder_run import LadderOptions, run_ladder

    loose = recipe_from({"base": "teacache", "first_block_cache": TEACACHE, "name": "teacache"})
    real = ladder_run.recipe_from
    monkeypatch.setattr(ladder_run, "recipe_from", lambda name: loose if name == "teacache" else real(name))
    result = run_ladder(LadderOptions(variant="dev", device="cpu", size="tiny", steps=STEPS, rounds=1, warmup=0,
                                      step_rounds=1, rungs=("bf16", "teacache")))
    by_rung = {r.rung: r for r in result.rungs}
    assert by_rung["teacache"].status == "ok", by_rung["teacache"].error
    assert by_rung["teacache"].cached_steps == STEPS - 2 and by_rung["bf16"].cached_steps is None
