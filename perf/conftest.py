"""Fixtures of the GPU perf tier: full-size synthetic FLUX.1 pipelines at 1024x1024, batch 1 (schnell by default;
dev and Kontext in perf/test_variants.py).

Every benchmark builds a fresh pipeline and applies one ladder rung through fluxperf.measure.runner.prepared, inside a
fresh inductor cache (so the first call is a cold compile), measures through fluxperf.bench.harness.Bench, then
frees the GPU: one full-size model on the GPU at a time. FLUXPERF_INJECT_SLOWDOWN=<fraction> (test-only) hooks
extra matmuls into the transformer blocks before optimization, for the regression demo.
"""

from __future__ import annotations

import contextlib
import os
import traceback

import pytest

from fluxperf.bench.build_cache import EXPORT_PACKAGES_ENV, build_cache, resumed_build
from fluxperf.model.shapes import ShapeSpec

SPEC = ShapeSpec("schnell", 1024, 1024)
STEPS = 4
PROMPT = "a photo of a red car in the city at night, cinematic lighting"
STEP_ROUNDS, VAE_ROUNDS, E2E_ROUNDS = 20, 20, 10  # >= 7 so Mann-Whitney can reach p < 0.002
IMAGE_ROUNDS = 8  # 28-step images: dev ~3.9 s, Kontext ~2x; 8 rounds keep each perf group under 9 minutes
# $FLUXPERF_EXPORT_PACKAGES (EXPORT_PACKAGES_ENV): where the export rung keeps its AOTInductor packages, and the long
# builds (export, max-autotune compiles) their inductor caches, between runs (fluxperf.bench.build_cache);
# scripts/tiers/perf-tier.sh sets it. Unset or empty: every rung builds cold in a fresh cache.


def require_rung(name_or_recipe):
    """The rung's Recipe (a rung name, dict or Recipe), or skip naming each missing package or GPU feature and how
    to get it (fluxperf.requirements.missing, through the root conftest's recipe_marks)."""
    from root_conftest import recipe_marks

    from fluxperf.ladder import recipe_from

    recipe = recipe_from(name_or_recipe)
    _, missing = recipe_marks(recipe, check=True)
    if missing:
        pytest.skip(missing)
    return recipe


class PerfRunner:
    """Builds, optimizes, measures and frees one benchmark's pipeline."""

    def __init__(self, request, benchmark):
        self.request, self.benchmark = request, benchmark

    # -- the three kinds of benchmark ---------------------------------------------------------------------
    def transformer_step(self, rung_name: str, spec: ShapeSpec = SPEC) -> dict:
        """One transformer forward (a denoising step) of the rung, at `spec` (default schnell 1024²)."""
        return self._freeing(self._transformer_step, rung_name, spec)

    def vae_decode(self, rung_name: str) -> dict:
        """VAE decode of 128x128 latents to a 1024x1024 image, as the rung leaves the VAE."""
        return self._freeing(self._vae_decode, rung_name)

    def end_to_end(self, rung_name: str) -> dict:
        """The whole schnell call: text encoders, 4 steps, VAE decode, PIL image."""
        return self._freeing(self._end_to_end, rung_name)

    def image(self, recipe, spec: ShapeSpec, steps: int) -> dict:
        """A whole image of `spec.variant` (dev/Kontext: 28 steps) from seeded prompt embeddings, with the block
        cache the recipe may enable: stores the cache's step count as the cached_steps proxy."""
        return self._freeing(self._image, recipe, spec, steps)

    # -- implementations ----------------------------------------------------------------------------------
    def _transformer_step(self, rung_name: str, spec: ShapeSpec) -> dict:
        import torch

        from fluxperf.bench.flops import step_flops
        from fluxperf.bench.harness import Bench, timed_call
        from fluxperf.model.configs import dims_of_pipeline
        from fluxperf.model.shapes import transformer_inputs

        recipe = require_rung(rung_name)
        resumed = resumed_build(recipe)  # a build resumed from an earlier (stopped) one is not cold
        with build_cache(recipe), self._prepared(recipe, text_encoders=False, spec=spec) as (run, dyn0, info):
            # the rung's dtype (bf16, or fp16 for the fp16 rung): the transformer's own
            inputs = transformer_inputs(spec, dims_of_pipeline(run.pipe), device="cuda", dtype=run.pipe.transformer.dtype)
            transformer = run.pipe.transformer

            def step():
                with torch.no_grad():
                    return transformer(**inputs)

            first = timed_call(step)
            if resumed or _reused_packages(run.stack):  # not a cold build: no compile_cold_s
                first = None
                info["export_build" if recipe.export.enabled else "compile_build"] = (
                    "package loaded from the cache" if _reused_packages(run.stack) else
                    "built on a kept inductor cache (resumed)")
            return Bench(self.request, self.benchmark).run(
                step, rounds=STEP_ROUNDS, warmup_rounds=3, flops=step_flops(spec).total, first_call_s=first,
                setup_s=run.setup_s, warm_compile=_warm_compile(step) if recipe.compile.enabled else None,
                info=info, dyn_before=dyn0)

    def _vae_decode(self, rung_name: str) -> dict:
        import torch

        from fluxperf.bench.harness import Bench, fresh_compile_cache, timed_call
        from fluxperf.measure.runner import free_gpu
        from fluxperf.model.configs import dims_of_pipeline
        from fluxperf.model.shapes import vae_latents

        recipe = require_rung(rung_name)
        with fresh_compile_cache(), self._prepared(recipe, text_encoders=False, slowdown=False) as (run, dyn0, info):
            latents = vae_latents(SPEC, dims_of_pipeline(run.pipe), device="cuda", dtype=run.pipe.vae.dtype)
            vae = run.pipe.vae
            run.pipe.transformer = None  # only the VAE stays on the GPU while it is measured
            free_gpu()

            def decode():
                with torch.no_grad():
                    return vae.decode(latents, return_dict=False)[0]

            first = timed_call(decode)
            return Bench(self.request, self.benchmark).run(
                decode, rounds=VAE_ROUNDS, warmup_rounds=3, first_call_s=first, setup_s=run.setup_s,
                warm_compile=_warm_compile(decode) if recipe.compile.enabled else None, info=info, dyn_before=dyn0)

    def _end_to_end(self, rung_name: str) -> dict:
        import torch

        from fluxperf.bench.harness import Bench, fresh_compile_cache, timed_call

        recipe = require_rung(rung_name)
        with fresh_compile_cache(), self._prepared(recipe, text_encoders=True) as (run, dyn0, info):
            pipe = run.pipe

            def generate():
                with torch.no_grad():
                    return pipe(PROMPT, height=SPEC.height, width=SPEC.width, num_inference_steps=STEPS,
                                guidance_scale=0.0, max_sequence_length=SPEC.text_tokens,
                                generator=torch.Generator("cuda").manual_seed(0), output_type="pil").images

            first = timed_call(generate)
            return Bench(self.request, self.benchmark).run(
                generate, rounds=E2E_ROUNDS, warmup_rounds=2, first_call_s=first, setup_s=run.setup_s,
                warm_compile=_warm_compile(generate) if recipe.compile.enabled else None, info=info,
                dyn_before=dyn0)

    def _image(self, recipe, spec: ShapeSpec, steps: int) -> dict:

        from fluxperf.bench.harness import Bench, fresh_compile_cache, timed_call
        from fluxperf.measure.ladder_run import image_call
        from fluxperf.model.configs import dims_of_pipeline
        from fluxperf.model.shapes import initial_latents, stand_in_prompt_embeds
        from fluxperf.steps.caching.stats import last_call_cache_stats

        recipe = require_rung(recipe)
        # the protocol disables the block cache afterwards: cache-dit patches the pipeline class
        with fresh_compile_cache(), self._prepared(recipe, text_encoders=False, spec=spec, steps=steps) as (
                run, dyn0, info):
            pipe, dims = run.pipe, dims_of_pipeline(run.pipe)
            # seeded stand-ins for T5 and CLIP pooled: the text encoders stay off
            dtype = pipe.transformer.dtype  # bf16, or fp16 for an fp16 rung
            embeds = stand_in_prompt_embeds(spec, dims, seed=0, device="cuda", dtype=dtype)
            latents = initial_latents(spec, dims, 0, device="cuda", dtype=dtype)
            generate = image_call(pipe, spec.variant, spec, steps=steps, seed=0, embeds=embeds, latents=latents,
                                  output_type="np")
            first = timed_call(generate)
            cache = last_call_cache_stats(pipe)  # of the first (compiling) call: same inputs as every round
            info = {**info, "steps": steps, "cache": cache}
            return Bench(self.request, self.benchmark).run(
                generate, rounds=IMAGE_ROUNDS, warmup_rounds=1, first_call_s=first, setup_s=run.setup_s,
                warm_compile=_warm_compile(generate) if recipe.compile.enabled else None, info=info,
                dyn_before=dyn0, count_kernels=cache is None,
                extra_proxies={"cached_steps": cache["cached_steps"]} if cache else None)

    @contextlib.contextmanager
    def _prepared(self, recipe, *, text_encoders: bool, slowdown: bool = True, spec: ShapeSpec = SPEC,
                  steps: int = STEPS):
        """fluxperf.measure.runner.prepared for the perf tier: the full pipeline on the GPU in bf16, maybe the test-only
        slowdown injected, the recipe applied (timed). Yields (Prepared, dynamo counts before apply, extra_info).

        Called inside fresh_compile_cache() (TORCHINDUCTOR_CACHE_DIR is the fresh directory).
        """
        from fluxperf.bench.harness import dynamo_counts
        from fluxperf.bench.slowdown import install_slowdown, slowdown_fraction
        from fluxperf.measure.runner import prepared

        if recipe.export.enabled:  # kept packages (see EXPORT_PACKAGES_ENV), or cold in the fresh inductor cache dir
            kept = os.environ.get(EXPORT_PACKAGES_ENV)
            aoti = os.path.join(kept, "aoti") if kept else os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "aoti")
            recipe = recipe.replace(export={"cache_dir": aoti})
        fraction = slowdown_fraction() if slowdown else None
        dyn0 = {}

        def before_apply(pipe):
            if fraction:
                install_slowdown(pipe.transformer, fraction, spec)
            dyn0.update(dynamo_counts())

        with prepared(spec.variant, "full", recipe, device="cuda", spec=spec, steps=steps, dtype="bfloat16",
                      text_encoders=text_encoders, before_apply=before_apply) as run:
            info = {"rung": recipe.name, "spec": spec.key(), "applied": run.stack.to_dict(), "apply_s": run.setup_s,
                    "slowdown_injected": fraction}
            yield run, dyn0, info

    def _freeing(self, fn, *args):
        """Run fn, then free the GPU; on failure clear the traceback's frames so they release the model."""
        from fluxperf.measure.runner import free_gpu

        try:
            return fn(*args)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            free_gpu()


def _reused_packages(stack) -> bool:
    """Whether the export stage loaded every package from the cache (its AppliedStack step says "hit")."""
    for step in stack.steps:
        if step.name == "export":
            caches = step.details.get("cache") or {}
            return bool(caches) and all(v == "hit" for v in caches.values())
    return False


def _warm_compile(fn):
    """A callable measuring a warm recompile: dynamo caches reset, the on-disk inductor cache kept."""
    def measure() -> float:
        import torch

        from fluxperf.bench.harness import timed_call

        torch._dynamo.reset()
        return timed_call(fn)

    return measure


@pytest.fixture
def perf(request, benchmark):
    """The perf-tier runner (see PerfRunner)."""
    return PerfRunner(request, benchmark)
