"""The measuring protocol: build a pipeline, apply a recipe (timed), hand it out, and ALWAYS free it.

Every measurement of fluxperf (the ladder, the GPU numerics tier, the perf tier, `fluxperf profile`, the bench
scripts) goes through `prepared(...)`, so each gets the same steps in the same order:

1. build the pipeline (fluxperf.model.build.build_pipeline), progress bar off;
2. `before_apply(pipe)`, if given (e.g. reset peak memory, inject the test-only slowdown, read counters);
3. apply the recipe (fluxperf.apply), timed: `setup_s`;
4. the caller measures inside the `with` block;
5. on the way out, whatever happened (a failing build, apply or measurement included): disable the block cache
   (cache-dit patches the pipeline *class*: a cache left on refuses every later pipeline), drop the references
   to the pipeline and the AppliedStack, clear the frames of a failure's traceback (they hold the model), reset
   dynamo (a finished measurement's compiled code must not leak into the next) and free the GPU (`free_gpu`).

Serialize what you need (e.g. `run.stack.to_dict()`) inside the block: afterwards `run.pipe` and `run.stack` are
None. Keep no other reference to the pipeline past the block (measure in a helper function whose locals die with
it), or its memory outlives the free.

Example:
    >>> with prepared("schnell", "tiny", rung("bf16"), device="cpu", spec=ShapeSpec("schnell", 64, 64)) as run:  # doctest: +SKIP
    ...     print(run.stack.attention_backend, f"{run.setup_s:.2f} s")
"""

from __future__ import annotations

import contextlib
import gc
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Prepared:
    """A built (and optimized) pipeline, for the duration of a `prepared` block.

    Attributes:
        pipe: the pipeline (None after the block).
        stack: fluxperf.apply.AppliedStack of the recipe (None without a recipe, and after the block).
        setup_s: wall seconds apply() took (0.0 without a recipe); a first call's compile is not in it.
        build_s: wall seconds build_pipeline() took.
    """

    pipe: Any
    stack: Any
    setup_s: float
    build_s: float


@contextlib.contextmanager
def prepared(variant: str, size: str, recipe=None, *, device: str, spec=None, steps: int | None = None,
             dtype: str | None = None, seed: int = 0, text_encoders: bool = False, checkpoint: str | None = None,
             before_apply: Callable[[Any], None] | None = None) -> Iterator[Prepared]:
    """Build `variant`/`size` on `device`, apply `recipe` (timed), yield a Prepared, and always free it.

    Args:
        variant, size: "schnell"/"dev"/"kontext", "tiny"/"full" (ignored with a checkpoint).
        recipe: a fluxperf.recipe.Recipe, or None to build only (the bench scripts apply their own steps).
        device: "cpu", "cuda" or "cuda:N".
        spec: ShapeSpec of the calls to come (export needs it), passed to apply().
        steps: denoising steps of the calls to come (the block caches need them), passed to apply().
        dtype: the build dtype; None: the recipe's (bfloat16 without a recipe). apply() casts to the recipe's.
        seed: weight seed of the synthetic model.
        text_encoders: build CLIP and T5 too (False: call with prompt embeddings, see shapes.stand_in_prompt_embeds).
        checkpoint: a local path or hub id of a real pipeline instead of the synthetic one.
        before_apply: called with the built pipeline right before apply() (not timed in setup_s).
    Yields:
        Prepared(pipe, stack, setup_s, build_s).
    Raises:
        whatever building, applying or the block raises, after the pipeline is freed.
    """
    from fluxperf.model.build import build_pipeline

    run = Prepared(pipe=None, stack=None, setup_s=0.0, build_s=0.0)
    try:
        t0 = time.perf_counter()
        run.pipe = build_pipeline(variant, size, seed=seed, device=device, checkpoint=checkpoint,
                                  dtype=dtype or (recipe.dtype if recipe is not None else "bfloat16"),
                                  text_encoders=text_encoders)
        run.build_s = time.perf_counter() - t0
        run.pipe.set_progress_bar_config(disable=True)
        if before_apply is not None:
            before_apply(run.pipe)
        if recipe is not None:
            run.stack, run.setup_s = _timed_apply(run.pipe, recipe, spec=spec, steps=steps, variant=variant)
        yield run
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # finished frames (apply's, the measurement's) hold the model
        raise
    finally:
        _release(run)


def _timed_apply(pipe, recipe, *, spec, steps, variant) -> tuple[Any, float]:
    """(AppliedStack, wall seconds of apply())."""
    from fluxperf.apply import apply

    t0 = time.perf_counter()
    stack = apply(pipe, recipe, spec=spec, num_inference_steps=steps, variant=variant)
    return stack, time.perf_counter() - t0


def _release(run: Prepared) -> None:
    """Disable the block cache, drop the references, drop compiled code, free the GPU (each step runs even if
    disabling the cache fails: that error is raised after the free)."""
    import torch

    from fluxperf.steps.caching.stats import disable_active_cache

    try:
        if run.pipe is not None:
            disable_active_cache(run.pipe)
    finally:
        run.pipe = run.stack = None
        torch._dynamo.reset()  # compiled code of a finished measurement must not leak into the next one
        free_gpu()


def free_gpu() -> None:
    """Collect garbage and return the CUDA caching allocator's free blocks (call after dropping a model).

    The one GPU free of fluxperf. It keeps compiled code, so it is safe in the middle of a measurement (e.g.
    after dropping the transformer to time the VAE alone); compiled graphs may hold weights (frozen constants),
    which is why `prepared` also resets dynamo when a measurement ends. Without CUDA: garbage collection only.
    """
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


__all__ = ["Prepared", "prepared", "free_gpu"]
