"""Measurements of context-parallel rungs, run in every rank by fluxperf.parallel_launch (issue 16).

Each function here is a launch target `fn(rank, world_size, ...)`: it builds the pipeline on its rank's device
(`cuda:<rank>`, or the CPU under gloo), applies the recipe (fluxperf.apply; the parallel stage needs the process
group the launcher made) and makes exactly the same calls on every rank (collectives pair them up); rank 0's
return value comes back to the caller.

* transformer_vs_single: one transformer forward, unsplit (before apply) and parallel (after), on the same seeded
  inputs: the parallel output's error against the single-process one.
* image_vs_single: the same for a whole pipeline image (seeded prompt embeddings and noise): PSNR.
* (a ladder rung in every rank: fluxperf.measure.ladder_run._rank_rung)
* (the perf tier's mirrored step lives in fluxperf.measure.parallel_bench.step_mirror)
"""

from __future__ import annotations

from typing import Any

from fluxperf.parallel_launch import rank_device


def transformer_vs_single(rank: int, world_size: int, recipe, variant: str, size: str, spec, seed: int = 0,
                          dtype: str | None = None) -> dict[str, Any]:
    """The parallel transformer's output vs the unsplit output of the same model on the same inputs.

    The unsplit reference runs in each rank before apply() (same weights, same device, same inputs); dtype: the
    build dtype (default: the recipe's). Returns rank 0's {"max_abs", "rel_err" (||out - ref|| / ||ref||),
    "shape", "applied" (AppliedStack.to_dict()), "world_size"}.
    """
    import torch

    from fluxperf.apply import apply
    from fluxperf.ladder import recipe_from
    from fluxperf.model.build import build_pipeline
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs

    recipe = recipe_from(recipe)
    device = rank_device(rank)
    pipe = build_pipeline(variant, size, seed=seed, device=device, dtype=dtype or recipe.dtype, text_encoders=False)
    inputs = transformer_inputs(spec, dims_of_pipeline(pipe), device=device, dtype=pipe.transformer.dtype, seed=seed)
    with torch.inference_mode():
        ref = pipe.transformer(**inputs)[0].float()
    stack = apply(pipe, recipe, spec=spec, variant=variant)
    with torch.inference_mode():
        out = pipe.transformer(**inputs)[0].float()
    return {"max_abs": (out - ref).abs().max().item(), "rel_err": ((out - ref).norm() / ref.norm()).item(),
            "shape": list(out.shape), "applied": stack.to_dict(), "world_size": world_size}


def image_vs_single(rank: int, world_size: int, recipe, variant: str, size: str, spec, steps: int,
                    seed: int = 0) -> dict[str, Any]:
    """A whole image (seeded embeddings and noise, `steps` steps) before and after apply(): PSNR (dB) and the
    largest pixel difference (0-255), rank 0's; both images as uint8 arrays (H, W, 3) under "images"."""
    import numpy as np

    from fluxperf.apply import apply
    from fluxperf.ladder import recipe_from
    from fluxperf.measure.ladder_run import image_call
    from fluxperf.measure.metrics import psnr
    from fluxperf.model.build import build_pipeline
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import initial_latents, stand_in_prompt_embeds

    recipe = recipe_from(recipe)
    device = rank_device(rank)
    pipe = build_pipeline(variant, size, seed=seed, device=device, dtype=recipe.dtype, text_encoders=False)
    pipe.set_progress_bar_config(disable=True)
    dims = dims_of_pipeline(pipe)
    dtype = pipe.transformer.dtype
    call = image_call(pipe, variant, spec, steps=steps, seed=seed,
                      embeds=stand_in_prompt_embeds(spec, dims, seed=seed, device=device, dtype=dtype),
                      latents=initial_latents(spec, dims, seed, device=device, dtype=dtype), output_type="np")
    ref = _uint8(call())
    stack = apply(pipe, recipe, spec=spec, num_inference_steps=steps, variant=variant)
    out = _uint8(call())
    return {"psnr_db": float(psnr(ref, out)), "max_pixel_diff": int(np.abs(ref.astype(int) - out).max()),
            "applied": stack.to_dict(), "world_size": world_size, "images": (ref, out)}


def _uint8(image):
    """A float image (H, W, 3) in [0, 1] (output_type="np", first image) as uint8."""
    import numpy as np

    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
