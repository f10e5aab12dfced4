"""The setup every rank of a context-parallel benchmark enters (issue 16; the perf group `parallel`).

`step_mirror(rank, world_size, recipe, spec)` builds the pipeline on the rank's device, applies the recipe (its
parallel stage joins the process group fluxperf.parallel_launch.drive made) and yields a Mirrored whose `commands`
are the calls rank 0 times and the workers repeat:

* "step": one transformer forward on seeded inputs, returning the output sample (gathered, waited) (fluxperf.model.shapes.transformer_inputs, the same in every
  rank: context parallelism splits the full sequence inside the model);
* "reset": torch._dynamo.reset(), before a warm recompile is timed (every rank recompiles, as rank 0 does).

Rank 0 (the pytest process) enters it in-process; `drive` runs it in each worker. Both do the same things in the
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

    from fluxperf.bench.harness import dynamo_counts, fresh_compile_cache
    from fluxperf.bench.slowdown import install_slowdown, slowdown_fraction
    from fluxperf.ladder import recipe_from
    from fluxperf.measure.runner import prepared
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs
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
    with cache, prepared(spec.variant, size, recipe, device=device, spec=spec, dtype=dtype, seed=seed,
                         text_encoders=False, before_apply=before_apply) as run:
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
