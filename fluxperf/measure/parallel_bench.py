"""The setup every rank of a context-parallel benchmark enters (issue 16; the perf group `parallel`).

`step_mirror(rank, world_size, recipe, spec)` builds the pipeline on the rank's device, applies the recipe (its
parallel stage joins the process group fluxperf.parallel_mirror made) and yields a Mirrored whose `commands`
are the calls rank 0 times and the workers repeat:

* "step": one transformer forward on seeded inputs, returning the output sample (gathered, waited) (fluxperf.model.shapes.transformer_inputs, the same in every
  rank: context parallelism splits the full sequence inside the model);
* "reset": torch._dynamo.reset(), before a warm recompile is timed (every rank recompiles, as rank 0 does).

`image_mirror(rank, world_size, recipe, spec, steps)` is the same for a whole image ("image": the pipeline from
seeded prompt embeddings and noise, `steps` steps, decoded; every rank runs the whole pipeline).

Rank 0 (the pytest process) enters it in-process; fluxperf.parallel_mirror runs it in each worker. Both do the same things in the
same order: the test-only slowdown (FLUXPERF_INJECT_SLOWDOWN, inherited by the workers) is installed in every rank,
and each rank compiles in its own fresh inductor cache (a cold compile everywhere, as in the single-GPU tier).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Mirrored:
    """What a rank's setup yields: the commands (name -> zero-argument callable) and, for rank 0's record, the
    prepared pipeline (fluxperf.measure.runner.Prepared), dynamo counts before apply and the injected slowdown."""

    commands: dict[str, Any]
    run: Any
    dyn_before: dict = field(default_factory=dict)
    slowdown: float | None = None


@contextlib.contextmanager
def _prepared_rank(rank: int, recipe, spec, *, size: str, seed: int, dtype: str | None, fresh_cache: bool,
                   device: str | None, steps: int | None = None):
    """Build and apply on this rank as every mirrored setup does; yields (recipe, device, Prepared, dyn0, slowdown)."""
    from fluxperf.bench.harness import dynamo_counts, fresh_compile_cache
    from fluxperf.bench.slowdown import install_slowdown, slowdown_fraction
    from fluxperf.ladder import recipe_from
    from fluxperf.measure.runner import prepared
    from fluxperf.parallel_launch import rank_device

    recipe = recipe_from(recipe)
    device = device or rank_device(rank)
    fraction = slowdown_fraction()
    dyn0: dict = {}

    def before_apply(pipe) -> None:
        if fraction:
            install_slowdown(pipe.transformer, fraction, spec)
        dyn0.update(dynamo_counts())

    cache = fresh_compile_cache() if fresh_cache else contextlib.nullcontext()
    with cache, prepared(spec.variant, size, recipe, device=device, spec=spec, dtype=dtype, seed=seed, steps=steps,
                         text_encoders=False, before_apply=before_apply) as run:
        yield recipe, device, run, dyn0, fraction


@contextlib.contextmanager
def step_mirror(rank: int, world_size: int, recipe, spec, size: str = "full", seed: int = 0,
                dtype: str | None = None, fresh_cache: bool = True, device: str | None = None) -> Iterator[Mirrored]:
    """Build `spec.variant`/`size` on this rank's device, apply `recipe`, yield the step commands; free after.

    Args:
        rank, world_size: this process's place in the group (the launcher's).
        recipe: a rung name, dict or Recipe with a parallel stage of world size `world_size`.
        spec: fluxperf.model.shapes.ShapeSpec of the step (the full, unsplit sequence).
        size, seed, dtype: the synthetic model ("full" / "tiny"), its weight seed and build dtype (None: the
            recipe's).
        fresh_cache: compile in a fresh TORCHINDUCTOR_CACHE_DIR (a cold compile), removed afterwards.
        device: where to build; None: the rank's (cuda:<rank> under NCCL, else cpu; needs the process group).
    Raises:
        whatever building or applying raises (fluxperf.errors.UnavailableError without a process group).
    """
    import torch

    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs

    with _prepared_rank(rank, recipe, spec, size=size, seed=seed, dtype=dtype, fresh_cache=fresh_cache,
                        device=device) as (recipe, device, run, dyn0, fraction):
        transformer = run.pipe.transformer
        inputs = transformer_inputs(spec, dims_of_pipeline(run.pipe), device=device, dtype=transformer.dtype,
                                    seed=seed)

        def step():
            with torch.no_grad():
                out = transformer(**inputs)[0]
            # the output is gathered by a functional collective (diffusers' cp plan): wait for it, so the call
            # (and rank 0's CUDA-event clock, on the compute stream) includes the gather
            wait = getattr(out, "wait", None)
            return wait() if callable(wait) else out

        yield Mirrored({"step": step, "reset": torch._dynamo.reset}, run, dyn0, fraction)


@contextlib.contextmanager
def image_mirror(rank: int, world_size: int, recipe, spec, steps: int, size: str = "full", seed: int = 0,
                 dtype: str | None = None, fresh_cache: bool = True, device: str | None = None) -> Iterator[Mirrored]:
    """As step_mirror, but the command "image" generates a whole image: `steps` denoising steps from seeded prompt
    embeddings (fluxperf.model.shapes.stand_in_prompt_embeds) and noise, decoded; returns it as a float array
    (H, W, 3) in [0, 1] (output_type "np"), the same on every rank (each rank runs the whole pipeline; only the
    transformer's sequence is split).

    Raises:
        as step_mirror.
    """
    import torch

    from fluxperf.measure.ladder_run import image_call
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import initial_latents, stand_in_prompt_embeds

    with _prepared_rank(rank, recipe, spec, size=size, seed=seed, dtype=dtype, fresh_cache=fresh_cache,
                        device=device, steps=steps) as (recipe, device, run, dyn0, fraction):
        pipe, dims = run.pipe, dims_of_pipeline(run.pipe)
        dtype_ = pipe.transformer.dtype
        embeds = stand_in_prompt_embeds(spec, dims, seed=seed, device=device, dtype=dtype_)
        latents = initial_latents(spec, dims, seed, device=device, dtype=dtype_)
        generate = image_call(pipe, spec.variant, spec, steps=steps, seed=seed, embeds=embeds, latents=latents,
                              output_type="np")
        yield Mirrored({"image": generate, "reset": torch._dynamo.reset}, run, dyn0, fraction)
