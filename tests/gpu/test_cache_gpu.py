"""Block caching on the GPU: the full-size synthetic FLUX.1-dev (and Kontext) transformer, 28 steps, eager bf16.

PSNR of each cached image against the uncached image of the same pipeline, per threshold, and the number of
steps served from the cache. Random weights give residual changes unlike a trained model's, so the intermediate
thresholds are checked for consistency (counts within [0, steps - warm-up], monotone in the threshold, PSNR
falling as more steps are cached) and the ends exactly: a tiny threshold caches nothing and matches the uncached
image; a threshold >= 1 makes cache-dit cache every step after warm-up (28 - 8 = 20), and 4.9 makes FBC cache
every step after step 0 (27). 512x512 keeps each image ~2 s; `slow` adds regional torch.compile on top.

Run: pytest -m gpu tests/gpu/test_cache_gpu.py        (with $OUT set, the numbers go to $OUT/cache_gpu_numerics.json)
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from fluxperf.io import atomic_write_json
from fluxperf.optional import probe
from fluxperf.recipe import CacheDitConfig, FirstBlockCacheConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.numerics,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; run `pytest -m gpu` on the H100"),
]
needs_cache_dit = [pytest.mark.cache_dit,
                   pytest.mark.skipif(not probe("cache_dit"), reason="needs cache-dit: pip install 'fluxperf[cache-dit]'")]
DIT_VARIANTS = [pytest.param(v, marks=needs_cache_dit) for v in ("dev", "kontext")]

STEPS, WARMUP, SIZE = 28, 8, 512
DIT_THRESHOLDS = (1e-6, 0.08, 0.12, 0.24, 1.0)  # 1.0: cache-dit caches unconditionally after warm-up
FBC_THRESHOLDS = (1e-6, 0.15, 0.25, 0.4, 4.9)  # 4.9: every relative change is below it
IDENTICAL_DB = 60.0  # "no step cached" must reproduce the uncached image (same kernels, same order)
SLACK_DB, SLACK_STEPS = 1.0, 1  # cached steps change the trajectory, so monotonicity holds only up to this
RESULTS: dict = {}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return math.inf if np.array_equal(a, b) else float(peak_signal_noise_ratio(b, a, data_range=1.0))


@pytest.fixture(scope="module", autouse=True)
def write_results():
    yield
    out = os.environ.get("OUT")
    if out and RESULTS:
        atomic_write_json(os.path.join(out, "cache_gpu_numerics.json"), RESULTS)


@pytest.fixture(scope="module")
def pipes():
    """dev built full-size on the GPU; Kontext shares its components (same architecture and weights)."""
    from PIL import Image

    from fluxperf.model.build import build_pipeline, pipeline_class

    dev = build_pipeline("dev", "full", device="cuda", dtype="bfloat16", text_encoders=False)
    kontext = pipeline_class("kontext")(**dev.components)
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 512, 4096, generator=g).to("cuda", torch.bfloat16),
              "pooled_prompt_embeds": torch.randn(1, 768, generator=g).to("cuda", torch.bfloat16)}
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    extra = {"dev": {}, "kontext": {"image": image, "max_area": SIZE * SIZE, "_auto_resize": False}}

    def run(variant: str) -> np.ndarray:
        pipe = dev if variant == "dev" else kontext
        with torch.inference_mode():
            return pipe(height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5, output_type="np",
                        generator=torch.Generator().manual_seed(0), **embeds, **extra[variant]).images[0]

    refs = {v: run(v) for v in ("dev", "kontext")}
    return {"dev": dev, "kontext": kontext}, run, refs


def _sweep(pipes, variant, kind, thresholds):
    from fluxperf.steps.caching.cache_dit import apply_cache_dit, cache_dit_stats, disable_cache_dit
    from fluxperf.steps.caching.first_block import (
        apply_first_block_cache,
        disable_first_block_cache,
        first_block_cache_stats,
    )

    pipe_of, run, refs = pipes
    pipe, rows = pipe_of[variant], []
    for t in thresholds:
        if kind == "cache_dit":
            cfg = CacheDitConfig(enabled=True, Fn=8, Bn=0, residual_diff_threshold=t, max_warmup_steps=WARMUP)
            apply_cache_dit(pipe, cfg, variant=variant, num_inference_steps=STEPS)
            stats_fn, disable = cache_dit_stats, disable_cache_dit
        else:
            cfg = FirstBlockCacheConfig(enabled=True, threshold=t)
            apply_first_block_cache(pipe, cfg, variant=variant, num_inference_steps=STEPS)
            stats_fn, disable = first_block_cache_stats, disable_first_block_cache
        try:
            image = run(variant)
            stats = stats_fn(pipe)
        finally:
            disable(pipe)
        rows.append({"threshold": t, "psnr_db": psnr(image, refs[variant]), **stats})
    RESULTS[f"{variant}/{kind}"] = rows
    return rows


def _check_sweep(rows, max_cached):
    tiny, loose = rows[0], rows[-1]
    assert tiny["cached_steps"] == 0 and tiny["psnr_db"] >= IDENTICAL_DB, tiny
    assert loose["cached_steps"] == max_cached and loose["cached_step_indices"] == list(range(STEPS - max_cached, STEPS))
    assert all(r["total_steps"] == STEPS and 0 <= r["cached_steps"] <= max_cached for r in rows), rows
    for a, b in zip(rows, rows[1:]):  # larger threshold: at least as many cached steps (up to the slack)
        assert b["cached_steps"] >= a["cached_steps"] - SLACK_STEPS, (a, b)
    by_count = sorted(rows, key=lambda r: r["cached_steps"])
    for a, b in zip(by_count, by_count[1:]):  # more cached steps: no better image (up to the slack)
        if b["cached_steps"] > a["cached_steps"]:
            assert b["psnr_db"] <= a["psnr_db"] + SLACK_DB, (a, b)
    assert all(r["psnr_db"] < math.inf for r in rows if r["cached_steps"] > 0), rows  # caching changed the image


@pytest.mark.parametrize("variant", DIT_VARIANTS)
def test_cache_dit_threshold_sweep(pipes, variant):
    _check_sweep(_sweep(pipes, variant, "cache_dit", DIT_THRESHOLDS), STEPS - WARMUP)


@pytest.mark.parametrize("variant", ["dev", "kontext"])
def test_first_block_cache_threshold_sweep(pipes, variant):
    _check_sweep(_sweep(pipes, variant, "first_block", FBC_THRESHOLDS), STEPS - 1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("cache_dit", marks=needs_cache_dit), "first_block"])
def test_regional_compile_on_top_of_the_cache(pipes, kind):
    """The compile answer on CUDA/Inductor: cache-dit + compile_repeated_blocks(fullgraph=True), FBC + fullgraph=False.
    Same cached steps as eager; the image stays close to the eager cached image (compiled bf16 rounds differently)."""
    from fluxperf.steps.caching.cache_dit import COMPILE_HINT, apply_cache_dit, cache_dit_stats, disable_cache_dit
    from fluxperf.steps.caching.first_block import COMPILE_HINT as FBC_HINT
    from fluxperf.steps.caching.first_block import (
        apply_first_block_cache,
        disable_first_block_cache,
        first_block_cache_stats,
    )

    pipe_of, run, _ = pipes
    pipe = pipe_of["dev"]
    if kind == "cache_dit":
        cfg = CacheDitConfig(enabled=True, Fn=8, Bn=0, residual_diff_threshold=1.0, max_warmup_steps=WARMUP)
        enable = lambda: apply_cache_dit(pipe, cfg, variant="dev", num_inference_steps=STEPS)  # noqa: E731
        stats, disable, fullgraph = cache_dit_stats, disable_cache_dit, COMPILE_HINT["fullgraph"]
    else:
        cfg = FirstBlockCacheConfig(enabled=True, threshold=4.9)
        enable = lambda: apply_first_block_cache(pipe, cfg, variant="dev", num_inference_steps=STEPS)  # noqa: E731
        stats, disable, fullgraph = first_block_cache_stats, disable_first_block_cache, FBC_HINT["fullgraph"]
    enable()
    try:
        eager, eager_stats = run("dev"), stats(pipe)
        torch._dynamo.reset()
        pipe.transformer.compile_repeated_blocks(fullgraph=fullgraph)
        compiled, compiled_stats = run("dev"), stats(pipe)
    finally:
        for module in pipe.transformer.modules():  # back to eager for the other tests
            module._compiled_call_impl = None
        torch._dynamo.reset()
        disable(pipe)
    RESULTS[f"dev/{kind}/regional_compile"] = {"fullgraph": fullgraph, "psnr_vs_eager_db": psnr(compiled, eager),
                                               "eager": eager_stats, "compiled": compiled_stats}
    assert compiled_stats["cached_step_indices"] == eager_stats["cached_step_indices"]
    assert psnr(compiled, eager) >= 20.0
