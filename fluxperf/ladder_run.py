"""Run the ablation ladder: per rung build a fresh pipeline, apply the recipe, time it, compare its image.

Per rung: image latency (the whole pipeline call with precomputed prompt embeddings), one transformer step
(the denoiser alone, inputs from fluxperf.shapes), both with warm-up excluded and several rounds; the image's
PSNR/SSIM against the reference rung. A rung that fails is recorded with its error and makes the run fail:
it never drops silently out of the table (lesson 8).

Example:
    >>> result = run_ladder(LadderOptions(rungs=("bf16", "compile")))  # doctest: +SKIP
    >>> result.ok                                                      # doctest: +SKIP
    True
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .ladder import CPU_RUNGS, LADDER, recipe_from
from .model_configs import VARIANT_DEFAULTS, dims_of_pipeline

DEFAULT_PROMPT = "a photo of a red car in the city at night, cinematic lighting"
DEFAULT_GPU_RUNGS = ("bf16", "compile", "fused_qkv", "channels_last", "fa3_fp8", "float8", "flags")


@dataclass(frozen=True)
class LadderOptions:
    """What `fluxperf ladder` runs. None means: the default for the device/variant."""

    variant: str = "schnell"
    size: str | None = None  # tiny on CPU, full on CUDA
    device: str | None = None  # cuda if available
    height: int | None = None  # 64 tiny, 1024 full
    width: int | None = None
    steps: int | None = None  # variant default (schnell 4, dev/kontext 28)
    rungs: tuple[str, ...] | None = None
    reference: str | None = None  # "bf16" if run, else the first rung
    seed: int = 0
    batch: int = 1
    warmup: int = 1
    rounds: int = 3
    step_rounds: int = 5
    prompt: str = DEFAULT_PROMPT
    checkpoint: str | None = None

    def resolved(self) -> LadderOptions:
        """Fill the defaults that depend on the machine."""
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        size = self.size or ("full" if device.startswith("cuda") else "tiny")
        side = 1024 if size == "full" else 64
        rungs = self.rungs or (DEFAULT_GPU_RUNGS if device.startswith("cuda") else CPU_RUNGS)
        reference = self.reference or ("bf16" if "bf16" in rungs else rungs[0])
        if reference not in rungs:
            rungs = (reference, *rungs)
        return LadderOptions(**{**asdict(self), "device": device, "size": size, "height": self.height or side,
                                "width": self.width or side, "steps": self.steps or
                                VARIANT_DEFAULTS[self.variant]["steps"], "rungs": tuple(rungs),
                                "reference": reference})


@dataclass
class RungResult:
    rung: str
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    image_ms: dict[str, Any] | None = None
    step_ms: dict[str, Any] | None = None
    apply_s: float | None = None
    applied: dict[str, Any] | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    max_abs_error: float | None = None
    peak_memory_gib: float | None = None
    cached_steps: int | None = None  # steps of the last image served from a block cache (None: no cache on)
    image: Any = field(default=None, repr=False)  # PIL image, not serialized


@dataclass
class LadderResult:
    options: LadderOptions
    rungs: list[RungResult]
    environment: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.rungs)


def run_ladder(options: LadderOptions, progress: Callable[[str], None] = print) -> LadderResult:
    """Run every rung of `options` (see LadderOptions) and return per-rung results."""
    from .env import fingerprint
    from .shapes import ShapeSpec

    opts = options.resolved()
    for name in opts.rungs:  # fail fast on a typo, before minutes of model building
        recipe_from(name)
    spec = ShapeSpec(opts.variant, opts.height, opts.width, opts.batch)
    progress(f"[ladder] {opts.variant}/{opts.size} {opts.height}x{opts.width} steps={opts.steps} on {opts.device}: "
             f"rungs {', '.join(opts.rungs)}")
    embeds = _prompt_embeddings(opts, spec, progress)
    results = [_run_rung(name, opts, spec, embeds, progress) for name in opts.rungs]
    _add_image_metrics(results, opts.reference)
    return LadderResult(opts, results, fingerprint(with_gpu=opts.device.startswith("cuda")))


def _prompt_embeddings(opts: LadderOptions, spec, progress) -> dict:
    """Encode the prompt once with the text encoders (then free them): every rung gets the same embeddings."""
    from .models import build_pipeline

    t0 = time.perf_counter()
    pipe = build_pipeline(opts.variant, opts.size, seed=opts.seed, device=opts.device, dtype="bfloat16",
                          checkpoint=opts.checkpoint)
    prompt_embeds, pooled, _ = pipe.encode_prompt(opts.prompt, prompt_2=None, device=opts.device,
                                                  num_images_per_prompt=opts.batch,
                                                  max_sequence_length=spec.text_tokens)
    embeds = {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}
    del pipe
    _free(opts.device)
    progress(f"[ladder] prompt encoded with the text encoders in {time.perf_counter() - t0:.1f} s")
    return embeds


def _run_rung(name: str, opts: LadderOptions, spec, embeds: dict, progress) -> RungResult:
    result = RungResult(rung=name)
    try:
        _measure_rung(result, name, opts, spec, embeds, progress)
    except Exception as exc:  # recorded, shown in the table, and turned into a failing exit status
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        progress(f"[ladder] {name}: FAILED: {result.error}\n{traceback.format_exc(limit=3)}")
    finally:
        _free(opts.device)
    return result


def _measure_rung(result: RungResult, name: str, opts: LadderOptions, spec, embeds: dict, progress) -> None:
    import torch

    from .cache_stats import disable_active_cache
    from .models import build_pipeline

    recipe = recipe_from(name)
    pipe = build_pipeline(opts.variant, opts.size, seed=opts.seed, device=opts.device, dtype=recipe.dtype,
                          text_encoders=False, checkpoint=opts.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    if opts.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        _measure_applied(result, name, opts, spec, embeds, progress, pipe, recipe)
    finally:
        disable_active_cache(pipe)  # cache-dit patches the pipeline class: the next rung needs it off


def _measure_applied(result: RungResult, name: str, opts: LadderOptions, spec, embeds: dict, progress, pipe,
                     recipe) -> None:
    """Apply the rung's recipe to the built pipeline, then time its image and one transformer step."""
    import torch

    from .apply import apply
    from .cache_stats import last_call_cache_stats
    from .shapes import transformer_inputs
    from .timing import time_fn

    t0 = time.perf_counter()
    stack = apply(pipe, recipe, spec=spec, num_inference_steps=opts.steps, variant=opts.variant)
    result.apply_s, result.applied = time.perf_counter() - t0, stack.to_dict()
    dtype = pipe.transformer.dtype
    call = image_call(pipe, opts.variant, spec, steps=opts.steps, seed=opts.seed,
                      embeds={k: v.to(dtype) for k, v in embeds.items()},
                      latents=initial_latents(spec, dims_of_pipeline(pipe), opts.seed).to(opts.device, dtype))

    def say(msg):
        progress(f"[ladder] {name} image {msg}")

    image_t = time_fn(call, warmup=opts.warmup, rounds=opts.rounds, device=opts.device, progress=say)
    result.image_ms, result.image = image_t.summary(), call()
    cache = last_call_cache_stats(pipe)
    result.cached_steps = cache["cached_steps"] if cache else None
    inputs = transformer_inputs(spec, dims_of_pipeline(pipe), device=opts.device, dtype=dtype, seed=opts.seed)
    with torch.inference_mode():
        step_t = time_fn(lambda: pipe.transformer(**inputs), warmup=2, rounds=opts.step_rounds, device=opts.device)
    result.step_ms = step_t.summary()
    if opts.device.startswith("cuda"):
        result.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
    progress(f"[ladder] {name}: image {image_t.median_ms:.1f} ms (p90 {image_t.p90_ms:.1f}), "
             f"step {step_t.median_ms:.2f} ms, apply {result.apply_s:.1f} s, first call "
             f"{image_t.warmup_ms[0] if image_t.warmup_ms else float('nan'):.0f} ms")


def initial_latents(spec, dims, seed: int):
    """Packed initial noise (B, (H/16)*(W/16), in_channels), drawn in float32 so every rung (fp32, bf16, ...)
    starts from the same noise up to rounding; Kontext's conditioning tokens come from its input image."""
    import torch

    h, w = spec.latent_hw
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((spec.batch, h * w, dims.in_channels), generator=g, dtype=torch.float32)


def image_call(pipe, variant: str, spec, *, steps: int, seed: int, embeds: dict, latents, output_type="pil"):
    """A zero-argument callable generating the image(s) of `pipe` with fixed noise and prompt embeddings.

    Args:
        pipe: a FLUX pipeline (FluxKontextPipeline for "kontext").
        variant: "schnell", "dev" or "kontext": the guidance scale and, for Kontext, a seeded conditioning image.
        spec: the ShapeSpec (height, width, text tokens).
        steps, seed: denoising steps; seed of the generator and of Kontext's input image.
        embeds: {"prompt_embeds": (B, text, 4096), "pooled_prompt_embeds": (B, 768)} on the pipeline's device.
        latents: packed initial noise (B, image tokens, in_channels), e.g. initial_latents(...).
        output_type: "pil" (the first image) or "np".

    Example:
        >>> call = image_call(pipe, "dev", ShapeSpec("dev", 512, 512), steps=28, seed=0,  # doctest: +SKIP
        ...                   embeds=embeds, latents=latents)
        >>> image = call()  # doctest: +SKIP
    """
    import torch

    kwargs = dict(height=spec.height, width=spec.width, num_inference_steps=steps, latents=latents,
                  guidance_scale=VARIANT_DEFAULTS[variant]["guidance"],
                  max_sequence_length=spec.text_tokens, output_type=output_type, **embeds)
    if variant == "kontext":
        kwargs.update(image=_kontext_input_image(spec, seed), max_area=spec.height * spec.width,
                      _auto_resize=False)

    def call():
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            return pipe(generator=generator, **kwargs).images[0]

    return call


def _kontext_input_image(spec, seed: int):
    """A deterministic conditioning image (smooth gradients + noise) of the spec's conditioning size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = spec.cond_height, spec.cond_width
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, 0.5 + 0 * x], -1) * 200
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def _add_image_metrics(results: list[RungResult], reference: str) -> None:
    from .metrics import compare_images

    ref = next((r for r in results if r.rung == reference and r.status == "ok"), None)
    if ref is None:
        return
    for r in results:
        if r.status == "ok":
            m = compare_images(r.image, ref.image)
            r.psnr_db, r.ssim, r.max_abs_error = m["psnr_db"], m["ssim"], m["max_abs_error"]


def _free(device: str) -> None:
    import torch

    gc.collect()
    torch._dynamo.reset()  # compiled code of a finished rung must not leak into the next one
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


__all__ = ["LadderOptions", "LadderResult", "RungResult", "run_ladder", "image_call", "initial_latents", "LADDER"]
