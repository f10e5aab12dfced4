"""scripts/probes/bench_cache.py's cleanliness rule: the cache-off probe is judged against the recompile floor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probes" / "bench_cache.py"


@pytest.fixture(scope="module")
def bench_cache():
    spec = importlib.util.spec_from_file_location("bench_cache", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(floor_db, probe_db, probe_cached=0):
    out = [{"name": "uncached", "psnr_db": float("inf"), "stats": {"cached_steps": 0}},
           {"name": "cache_dit_probe", "psnr_db": probe_db, "stats": {"cached_steps": probe_cached}}]
    if floor_db is not None:
        out.insert(1, {"name": "uncached_recompiled", "psnr_db": floor_db, "stats": {"cached_steps": 0}})
    return out


def test_probe_at_the_recompile_floor_is_clean(bench_cache):
    # the H100 run: every compiled configuration ~47.4 dB against the first compilation
    assert bench_cache.clean_problems(rows(47.4, 47.45)) == []


def test_probe_below_the_floor_is_flagged_with_the_numbers(bench_cache):
    problems = bench_cache.clean_problems(rows(47.4, 40.0))
    assert len(problems) == 1 and "40.0 dB" in problems[0] and "recompile floor 47.4" in problems[0]


def test_bit_identical_recompile_demands_the_strict_bound(bench_cache):
    # no floor measured, or recompiling reproduces the image exactly: the probe must reach PROBE_MIN_DB
    assert bench_cache.clean_problems(rows(None, 47.4))
    assert bench_cache.clean_problems(rows(float("inf"), 59.0))
    assert bench_cache.clean_problems(rows(float("inf"), float("inf"))) == []


def test_probe_that_caches_is_flagged_even_with_a_perfect_image(bench_cache):
    problems = bench_cache.clean_problems(rows(47.4, float("inf"), probe_cached=1))
    assert problems and "cached 1 steps" in problems[0]


def test_skipped_configurations_are_problems(bench_cache):
    problems = bench_cache.clean_problems([{"name": "fbc_0.4", "skipped": "time budget 420 s spent (431 s)"}])
    assert problems == ["fbc_0.4 skipped (time budget 420 s spent (431 s))"]


def test_recompile_floor_runs_second(bench_cache):
    names = [name for name, _, _ in bench_cache.configs()]
    assert names[:3] == ["uncached", "uncached_recompiled", "cache_dit_probe"]
