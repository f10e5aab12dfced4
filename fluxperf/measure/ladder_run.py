"""Run the ablation ladder: per rung build a fresh pipeline, apply the recipe, time it, compare its image.

Per rung: image latency (the whole pipeline call with precomputed prompt embeddings) over `rounds` timed runs, with
its statistics (fluxperf.bench.latency: average, min, p50/p90/p99, each percentile only from the runs it needs)
and a per-stage breakdown of the same runs (fluxperf.measure.stage_regions: prompt encoding, each denoising step,
decoding, postprocessing, PIL conversion); one transformer step (the denoiser alone, inputs from
fluxperf.model.shapes); both with warm-up excluded; the image's PSNR/SSIM against the reference rung; with
`trace_file`, a profiler Chrome trace of one more call (after the timed ones) per rung (fluxperf.measure.trace). A rung that fails is recorded with its error and makes the run fail:
it never drops silently out of the table (lesson 8).

Example:
    >>> result = run_ladder(LadderOptions(rungs=("bf16", "compile")))  # doctest: +SKIP
    >>> result.ok                                                      # doctest: +SKIP
    True
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fluxperf.errors import FluxperfError
from fluxperf.ladder import CPU_RUNGS, LADDER, recipe_from, rung_names
from fluxperf.model.configs import SIZES, VARIANT_DEFAULTS, VARIANTS, dims_of_pipeline
from fluxperf.model.shapes import PIXELS_PER_TOKEN
from fluxperf.recipe import MAX_STEPS
from fluxperf.recipe_checks import check_fields, checked

DEFAULT_PROMPT = "a photo of a red car in the city at night, cinematic lighting"
DEFAULT_GPU_RUNGS = ("bf16", "compile", "fused_qkv", "channels_last", "fa3_fp8", "float8", "flags")
MAX_SIDE = 4096  # pixels: FLUX.1 is trained up to 2 MP; 4096 px already needs 65k image tokens


class OptionError(FluxperfError, ValueError):
    """A ladder option is out of its rule (one line: the option, the value, the rule, the fix)."""


_DEVICE = r"cpu|cuda(:[0-9]+)?"


@dataclass(frozen=True)
class LadderOptions:
    """What `fluxperf ladder` runs. None means: the default for the device/variant.

    Every field is checked at construction (fluxperf.recipe_checks: type from the annotation, rule next to the
    field), and a CUDA device must be present: OptionError, before anything is built. The CLI's argparse types
    are made from the same rules (fluxperf.cli._types).
    """

    variant: str = checked("schnell", choices=VARIANTS)
    size: str | None = checked(None, choices=(None, *SIZES))  # tiny on CPU, full on CUDA
    device: str | None = checked(None, pattern=_DEVICE, rule="cpu, cuda or cuda:<index>",
                                 fix="use cpu or cuda (default: cuda if available)")
    height: int | None = checked(None, lo=16, hi=MAX_SIDE, multiple=PIXELS_PER_TOKEN)  # 64 tiny, 1024 full
    width: int | None = checked(None, lo=16, hi=MAX_SIDE, multiple=PIXELS_PER_TOKEN)
    steps: int | None = checked(None, lo=1, hi=MAX_STEPS, fix="use e.g. 4 (schnell) or 28 (dev/kontext)")
    rungs: tuple[str, ...] | None = checked(None, choices=rung_names(), nonempty=True,
                                            rule=f"a non-empty list of rungs from {', '.join(rung_names())}")
    reference: str | None = checked(None, choices=rung_names())  # "bf16" if run, else the first rung
    seed: int = checked(0, lo=0, hi=2**32 - 1)
    batch: int = checked(1, lo=1, hi=64)
    warmup: int = checked(1, lo=0, hi=1000)
    rounds: int = checked(3, lo=1, hi=10_000)
    step_rounds: int = checked(5, lo=1, hi=10_000)
    prompt: str = checked(DEFAULT_PROMPT, nonempty=True)
    checkpoint: str | None = checked(None, nonempty=True, fix="a local directory or a hub id, or None (synthetic)")
    trace_file: str | None = checked(None, pattern=r".*[^/]\.json(\.gz)?", rule="a file name ending in .json or .json.gz",
                                     fix="e.g. trace.json.gz (one trace per rung: trace.<rung>.json.gz)")

    def __post_init__(self):
        check_fields(self, error=OptionError)
        problem = device_problem(self.device)
        if problem:
            raise OptionError(f"device={self.device!r}: {problem}")
        problem = duplicate_rungs_problem(self.rungs)
        if problem:
            raise OptionError(f"rungs={self.rungs!r}: {problem}")
        self._check_cache_rungs()

    def _check_cache_rungs(self) -> None:
        """Block-cache rungs need a variant and a step count with steps left to cache (fluxperf.steps.caching.cache_dit.check_variant
        and check_steps refuse them at apply(), after the models are built): refuse them here, before."""
        steps = VARIANT_DEFAULTS[self.variant]["steps"] if self.steps is None else self.steps
        for name in self.rungs or ():
            r = recipe_from(name)
            warmup = r.cache_dit.max_warmup_steps if r.cache_dit.enabled else 1 if r.first_block_cache.enabled else None
            if warmup is None:
                continue
            if self.variant == "schnell":
                raise OptionError(f"rungs include {name!r} (block cache) with variant='schnell': schnell's 4 steps are "
                                  "all warm-up steps, nothing can be cached. Fix: --variant dev (or kontext), or drop "
                                  f"the {name!r} rung.")
            if steps <= warmup:
                raise OptionError(f"rungs include {name!r} (block cache, {warmup} warm-up steps) with steps={steps}: "
                                  f"every step is a warm-up step. Fix: --steps {warmup + 1} or more (dev uses 28).")

    def resolved(self) -> LadderOptions:
        """Fill the defaults that depend on the machine (None fields only: a given value is never replaced)."""
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        size = self.size or ("full" if device.startswith("cuda") else "tiny")
        side = 1024 if size == "full" else 64
        rungs = self.rungs or (DEFAULT_GPU_RUNGS if device.startswith("cuda") else CPU_RUNGS)
        reference = self.reference or ("bf16" if "bf16" in rungs else rungs[0])
        if reference not in rungs:
            rungs = (reference, *rungs)
        return LadderOptions(**{**asdict(self), "device": device, "size": size,
                                "height": side if self.height is None else self.height,
                                "width": side if self.width is None else self.width,
                                "steps": VARIANT_DEFAULTS[self.variant]["steps"] if self.steps is None else self.steps,
                                "rungs": tuple(rungs), "reference": reference})


def duplicate_rungs_problem(rungs: tuple[str, ...] | None) -> str | None:
    """None if no rung is named twice, else the rule and the fix in words (a rung given twice would run twice,
    overwrite its own image and put two rows of one name in the table)."""
    twice = sorted({name for name in rungs or () if rungs.count(name) > 1})
    if not twice:
        return None
    once = ",".join(dict.fromkeys(rungs))
    return f"{', '.join(map(repr, twice))} given more than once: each rung runs once. Fix: --rungs {once}"


def device_problem(device: str | None) -> str | None:
    """None if `device` (None, "cpu", "cuda", "cuda:N") can run here, else the rule and the fix in words.

    Imports torch only for a CUDA device (to ask whether one is visible).
    """
    if device is None or device == "cpu":
        return None
    if not re.fullmatch(_DEVICE, device):
        return "must be cpu, cuda or cuda:<index>. Fix: use cpu or cuda (default: cuda if available)"
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA GPU is visible (torch.cuda.is_available() is False). "
                "Fix: use cpu, or leave the device unset (cuda when available)")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        return f"there are {torch.cuda.device_count()} CUDA device(s). Fix: use cuda:0..cuda:{torch.cuda.device_count() - 1}"
    return None


@dataclass
class RungResult:
    rung: str
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    image_ms: dict[str, Any] | None = None  # Timing.summary() of the image calls (samples_ms kept), without p90
    image_latency: dict[str, Any] | None = None  # fluxperf.bench.latency.LatencyStats.to_dict() of those calls
    stages: dict[str, Any] | None = None  # StageRecorder.breakdown() of the timed image calls
    trace_file: str | None = None  # the Chrome trace written for this rung (options.trace_file)
    host_syncs: dict[str, Any] | None = None  # fluxperf.measure.host_sync.StepSyncs.to_dict() of one warm call (CUDA)
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
    from fluxperf.env import fingerprint
    from fluxperf.model.shapes import ShapeSpec

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
    from fluxperf.measure.runner import prepared

    t0 = time.perf_counter()
    with prepared(opts.variant, opts.size, None, device=opts.device, dtype="bfloat16", seed=opts.seed,
                  text_encoders=True, checkpoint=opts.checkpoint) as run:
        prompt_embeds, pooled, _ = run.pipe.encode_prompt(opts.prompt, prompt_2=None, device=opts.device,
                                                          num_images_per_prompt=opts.batch,
                                                          max_sequence_length=spec.text_tokens)
    progress(f"[ladder] prompt encoded with the text encoders in {time.perf_counter() - t0:.1f} s")
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def _run_rung(name: str, opts: LadderOptions, spec, embeds: dict, progress) -> RungResult:
    """One rung: here, or (context-parallel rungs, issue 16) in one process per GPU through fluxperf.parallel_launch,
    each rank measuring as _run_rung_here does (_rank_rung); rank 0's result."""
    recipe = recipe_from(name)
    if not recipe.parallel.enabled:
        return _run_rung_here(name, opts, spec, embeds, progress)
    from fluxperf.parallel_launch import launch

    try:
        return launch(_rank_rung, name, opts, spec, {k: v.cpu() for k, v in embeds.items()},
                      nprocs=recipe.parallel.world_size, backend="nccl" if opts.device.startswith("cuda") else "gloo")
    except Exception as exc:  # recorded as _run_rung_here records a failing rung
        progress(f"[ladder] {name}: FAILED: {type(exc).__name__}: {exc}")
        return RungResult(rung=name, status="error", error=f"{type(exc).__name__}: {exc}")


def _rank_rung(rank: int, world_size: int, name: str, opts: LadderOptions, spec, embeds: dict) -> RungResult:
    """_run_rung_here in one rank of a context-parallel rung (launched by _run_rung): rank 0 prints progress and
    its RungResult is the rung's; the other ranks' traces, if asked, get a `.rank<r>` tag."""
    from fluxperf.parallel_launch import rank_device

    device = rank_device(rank)
    changes: dict[str, Any] = {"device": device}
    if rank and opts.trace_file:
        from fluxperf.measure.trace import tagged

        changes["trace_file"] = str(tagged(opts.trace_file, f"rank{rank}"))
    opts = replace(opts, **changes)
    progress = print if rank == 0 else (lambda _msg: None)
    return _run_rung_here(name, opts, spec, {k: v.to(device) for k, v in embeds.items()}, progress)


def _run_rung_here(name: str, opts: LadderOptions, spec, embeds: dict, progress) -> RungResult:
    """Build, apply and measure one rung through fluxperf.measure.runner.prepared (freed whatever happens)."""
    from fluxperf.measure.runner import prepared

    result = RungResult(rung=name)
    try:
        recipe = recipe_from(name)
        with prepared(opts.variant, opts.size, recipe, device=opts.device, spec=spec, steps=opts.steps,
                      seed=opts.seed, checkpoint=opts.checkpoint,
                      before_apply=lambda _pipe: _reset_peak_memory(opts.device)) as run:
            _measure_applied(result, name, opts, spec, embeds, progress, run)
    except Exception as exc:  # recorded, shown in the table, and turned into a failing exit status
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        progress(f"[ladder] {name}: FAILED: {result.error}\n{traceback.format_exc(limit=3)}")
    return result


def _reset_peak_memory(device: str) -> None:
    """Peak memory of a rung counts from its built pipeline on (apply included)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _measure_applied(result: RungResult, name: str, opts: LadderOptions, spec, embeds: dict, progress, run) -> None:
    """Time the applied pipeline's image and one transformer step (`run`: fluxperf.measure.runner.Prepared)."""
    import torch

    from fluxperf.bench.latency import cell_text, latency_stats
    from fluxperf.bench.timing import time_fn
    from fluxperf.measure.stage_regions import stage_regions
    from fluxperf.model.shapes import initial_latents, transformer_inputs
    from fluxperf.steps.caching.stats import last_call_cache_stats

    pipe, stack = run.pipe, run.stack
    result.apply_s, result.applied = run.setup_s, stack.to_dict()
    dtype = pipe.transformer.dtype
    dims = dims_of_pipeline(pipe)
    call = image_call(pipe, opts.variant, spec, steps=opts.steps, seed=opts.seed,
                      embeds={k: v.to(dtype) for k, v in embeds.items()},
                      latents=initial_latents(spec, dims, opts.seed, device=opts.device, dtype=dtype))

    def say(msg):
        progress(f"[ladder] {name} image {msg}")

    with stage_regions(pipe, device=opts.device) as regions:  # a few marks per step: microseconds per call
        image_t = time_fn(regions.timed(call), warmup=opts.warmup, rounds=opts.rounds, device=opts.device,
                          progress=say)
    result.stages = regions.breakdown(last=opts.rounds)
    result.host_syncs = _host_syncs(pipe, call, opts.device)
    latency = latency_stats(image_t.samples_ms)
    result.image_latency = latency.to_dict()
    # Timing's p90 interpolates whatever the rounds are; the ladder reports percentiles only from enough runs
    result.image_ms = {k: v for k, v in image_t.summary().items() if k != "p90_ms"}
    result.image = _final_image(pipe, call, name, opts, result)
    cache = last_call_cache_stats(pipe)
    result.cached_steps = cache["cached_steps"] if cache else None
    inputs = transformer_inputs(spec, dims, device=opts.device, dtype=dtype, seed=opts.seed)
    with torch.inference_mode():
        step_t = time_fn(lambda: pipe.transformer(**inputs), warmup=2, rounds=opts.step_rounds, device=opts.device)
    result.step_ms = {k: v for k, v in step_t.summary().items() if k != "p90_ms"}
    result.applied = stack.to_dict()  # again, after the calls: recompiles they caused are counted (issue 13.1)
    if opts.device.startswith("cuda"):
        result.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
    progress(f"[ladder] {name}: image avg {latency.avg_ms:.1f} ms, p50 {cell_text(latency, 50, '{:.1f}')}, p90 "
             f"{cell_text(latency, 90, '{:.1f}')} over {latency.n} runs, step {step_t.median_ms:.2f} ms, apply "
             f"{result.apply_s:.1f} s, first call "
             f"{f'{image_t.warmup_ms[0]:.0f} ms' if image_t.warmup_ms else 'not measured (--warmup 0: the first timed run includes it)'}")


def _host_syncs(pipe, call, device: str) -> dict[str, Any] | None:
    """Host syncs per denoising step of one more (warm) call, on CUDA (the flux-fast lesson: one `.item()` per step
    stalls the compiled graph); None where they cannot be observed (CPU)."""
    from fluxperf.measure.host_sync import observable, syncs_per_step

    if not (device.startswith("cuda") and observable()):
        return None
    return syncs_per_step(pipe, call).to_dict()


def _final_image(pipe, call, name: str, opts: LadderOptions, result: RungResult):
    """One more call for the rung's image (after the timed ones); with opts.trace_file it is the traced call,
    written to <trace stem>.<rung>.json[.gz]."""
    if not opts.trace_file:
        return call()
    from fluxperf.measure.trace import tagged, traced

    path = tagged(opts.trace_file, name)
    with traced(pipe, path, device=opts.device):
        image = call()
    result.trace_file = str(path)
    return image


def image_call(pipe, variant: str, spec, *, steps: int, seed: int, embeds: dict, latents, output_type="pil"):
    """A zero-argument callable generating the image(s) of `pipe` with fixed noise and prompt embeddings.

    Args:
        pipe: a FLUX pipeline (FluxKontextPipeline for "kontext").
        variant: "schnell", "dev" or "kontext": the guidance scale and, for Kontext, a seeded conditioning image.
        spec: the ShapeSpec (height, width, text tokens).
        steps, seed: denoising steps; seed of the generator and of Kontext's input image.
        embeds: {"prompt_embeds": (B, text, 4096), "pooled_prompt_embeds": (B, 768)} on the pipeline's device.
        latents: packed initial noise (B, image tokens, in_channels), e.g. fluxperf.model.shapes.initial_latents(...).
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
    from fluxperf.measure.metrics import compare_images

    ref = next((r for r in results if r.rung == reference and r.status == "ok"), None)
    if ref is None:
        return
    for r in results:
        if r.status == "ok":
            m = compare_images(r.image, ref.image)
            r.psnr_db, r.ssim, r.max_abs_error = m["psnr_db"], m["ssim"], m["max_abs_error"]


__all__ = ["LadderOptions", "LadderResult", "RungResult", "run_ladder", "image_call", "LADDER"]
