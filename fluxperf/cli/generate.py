"""`fluxperf generate`: one image from a prompt with every optimization of the ladder's top rung on.

The seed is huggingface/flux-fast's gen_image.py (its arguments in utils/pipeline_utils.py): all optimizations on by
default, each switched off by its own flag. Here the default recipe is the ladder's top rung, `export` (bf16, fused
QKV, channels_last VAE, FA3 fp8 attention, torchao float8, inductor flags, torch.export + AOTInductor under CUDA
graphs); `--no-X` switches map onto Recipe fields in ONE place (fluxperf.cli._generate_switches).

What "on by default" means without a GPU: the default device is cuda when torch sees one, else cpu; on a CPU device
the model defaults to the tiny synthetic one (64x64) and the GPU-only steps (fp8 attention, float8, export: their
hardware needs in fluxperf.requirements) are switched off, and a note SAYS which ones and which switches do that by
hand. The rest of the stack (bf16, fused QKV, channels_last, regional torch.compile with the inductor flags) runs, so

    fluxperf generate --prompt "a red car" --output-file car.png

works on a laptop (about 35 s, most of it torch.compile's first call). On a GPU nothing is switched off: a missing
package or GPU capability is refused up front, naming the switch that drops the step.

Flow: every argument is checked first (fluxperf.cli._generate_plan: one line, exit 2, nothing built); then
fluxperf.measure.runner.prepared builds the pipeline (fluxperf.model.build: synthetic with weight seed 0, or
--checkpoint), applies the recipe (fluxperf.apply, timed) and always frees it; the first pipeline call (torch.compile
compiles there) runs with diffusers' progress bar; the image is written atomically (fluxperf.io.atomic_save); the
AppliedStack summary and the timings (build s, apply s, first call s) are printed.

Export packages: without --use-cached-model they are built for this run only (in a temporary directory, removed at
exit), as flux-fast builds them unless told to reuse; with it, the package cache (--cache-dir, else $FLUXPERF_CACHE or
~/.cache/fluxperf/aoti) is searched and kept: what it holds for this GPU/torch/shape is said before building, and hit
or miss (with the key parts that differ) after the export stage (fluxperf.cli._generate_packages).
"""

from __future__ import annotations

import contextlib
import sys
import time


def register(subparsers) -> None:
    from fluxperf.cli._generate_switches import SWITCHES
    from fluxperf.cli._types import checkpoint_type, option_type, value_type
    from fluxperf.measure.ladder_run import DEFAULT_PROMPT, LadderOptions, device_problem
    from fluxperf.model.configs import SIZES

    def opt(name, parse=str, **kw):
        return option_type(LadderOptions, name, parse, **kw)

    text = value_type(str, (str,), nonempty=True)
    p = subparsers.add_parser(
        "generate", help="one image from a prompt, every optimization of the ladder's top rung on",
        description="Generate one image with the ladder's top rung (export) applied; --no-X switches a step off. "
                    "On a CPU the tiny synthetic model runs and the GPU-only steps are switched off (said, not hidden).")
    p.add_argument("--prompt", type=text, default=DEFAULT_PROMPT, help=f"text prompt (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--variant", choices=("schnell", "dev"), default="schnell",
                   help="FLUX.1 variant (kontext edits an input image: not a prompt-to-image command)")
    p.add_argument("--size", choices=SIZES, help="synthetic model size (default: full on CUDA, tiny on CPU)")
    p.add_argument("--checkpoint", type=checkpoint_type(LadderOptions),
                   help="local path or hub id of a real FLUX.1 pipeline (default: synthetic weights, seed 0)")
    p.add_argument("--device", type=opt("device", extra=device_problem),
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--height", type=opt("height", int), help="pixels, a multiple of 16 (default 1024 full, 64 tiny)")
    p.add_argument("--width", type=opt("width", int), help="pixels, a multiple of 16 (default 1024 full, 64 tiny)")
    p.add_argument("--steps", type=opt("steps", int), help="denoising steps (default: schnell 4, dev 28)")
    p.add_argument("--seed", type=opt("seed", int), default=0, help="noise seed (default 0)")
    p.add_argument("--output-file", type=text, default="output.png",
                   help="image file, format from its suffix (default output.png; written atomically)")
    p.add_argument("--cache-dit-config", type=text, metavar="FILE",
                   help="YAML of cache-dit DBCache options (Fn_compute_blocks, Bn_compute_blocks, "
                        "residual_diff_threshold, max_warmup_steps, max_cached_steps, max_continuous_cached_steps); "
                        "not for schnell, and needs --no-export")
    p.add_argument("--use-cached-model", action="store_true",
                   help="reuse export packages from the package cache (and keep new ones there); says what matched")
    p.add_argument("--cache-dir", type=text, help="the package cache of --use-cached-model "
                                                  "(default: $FLUXPERF_CACHE or ~/.cache/fluxperf/aoti)")
    switches = p.add_argument_group("switches", "each turns one step of the top rung off")
    for switch in SWITCHES:
        switches.add_argument(switch.flag, action="store_true", help=switch.help)
    p.add_argument("--trace-file", type=opt("trace_file"), metavar="TRACE.json[.gz]",
                   help="also write a PyTorch profiler Chrome trace of one more call after the first (warm: no "
                        "compilation) with regions prompt_encoding, denoising_step, decoding, postprocessing, "
                        "pil_conversion; .json.gz is gzip-compressed")
    p.set_defaults(func=run)


def run(args) -> int:
    from fluxperf.cli._generate_plan import OPTION_PREFIX, make_plan
    from fluxperf.errors import FluxperfError
    from fluxperf.measure.ladder_run import OptionError

    try:
        plan = make_plan(args)
    except OptionError as exc:
        print(f"{OPTION_PREFIX}{exc}", file=sys.stderr)
        return 2
    try:
        return generate(plan, args)
    except FluxperfError as exc:  # a stage refused (the message names the value, the rule and the fix)
        print(f"{OPTION_PREFIX}{exc}", file=sys.stderr)
        return 1


def generate(plan, args) -> int:
    """Build, apply, generate, save and report (see the module docstring); 0 on success."""
    import tempfile

    from fluxperf.measure.runner import prepared

    say = _progress
    for note in plan.notes:
        say(note)
    model = plan.checkpoint or f"synthetic {plan.size}"
    say(f"{plan.variant} ({model}) on {plan.device}: {plan.height}x{plan.width}, {plan.steps} steps, seed "
        f"{plan.seed}; stages: {', '.join(_stages(plan.recipe))}")
    export = plan.recipe.export.enabled
    scratch = tempfile.TemporaryDirectory(prefix="fluxperf-generate-aoti-") if export and not plan.use_cached \
        else contextlib.nullcontext(plan.cache_dir)
    with scratch as cache_dir:
        recipe = plan.recipe.replace(export={"cache_dir": cache_dir}) if export else plan.recipe
        if plan.use_cached:
            for line in _survey(plan, cache_dir):
                say(f"package cache: {line}")
        say("[1/3] building the pipeline ...")
        with prepared(plan.variant, plan.size or "full", recipe, device=plan.device, spec=plan.spec,
                      steps=plan.steps, text_encoders=True, checkpoint=plan.checkpoint,
                      before_apply=lambda pipe: say(f"[2/3] applying the recipe{_apply_hint(recipe)} ...")) as run:
            say(f"[3/3] generating (first call{', compiles' if recipe.compile.enabled else ''}) ...")
            image, first_s = _first_call(run.pipe, plan, args)
            if plan.trace_file:  # one more call, warm (no compilation in the trace), with the stage regions
                from fluxperf.measure.trace import traced

                say(f"tracing one more (warm) call to {plan.trace_file} ...")
                with traced(run.pipe, plan.trace_file, device=plan.device) as regions:
                    image, _ = _first_call(run.pipe, plan, args)
                say("stages of the traced call (ms): " + ", ".join(
                    f"{k} {v:.1f}" for k, v in regions.breakdown()["median_ms"].items()))
            summary = _summary(run.stack) + _cache_stats(run.pipe)
            packages = _outcome(run.stack) if plan.use_cached else []
            build_s, apply_s = run.build_s, run.setup_s
    _save(image, plan.output, plan.output_format)
    for line in [*summary, *(f"package cache: {line}" for line in packages)]:
        print(line)
    print(f"timing: build {build_s:.1f} s, apply {apply_s:.1f} s, first call {first_s:.1f} s"
          + (" (includes torch.compile's compilation)" if recipe.compile.enabled else ""))
    print(f"wrote {plan.output}")
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stages(recipe) -> list[str]:
    from fluxperf.apply import plan as stage_plan

    return stage_plan(recipe)


def _apply_hint(recipe) -> str:
    if recipe.export.enabled:
        return " (export: AOTInductor builds each package it has no cached copy of: minutes on a GPU)"
    return ""


def _survey(plan, cache_dir: str) -> list[str]:
    """What the package cache holds for this GPU, torch, shape and dtype (fluxperf.cli._generate_packages)."""
    import torch

    from fluxperf.cli._generate_packages import survey_lines
    from fluxperf.steps.export.cache import current_gpu_name

    index = int(plan.device.partition(":")[2] or 0)
    where = {"variant": plan.variant, "shape_key": plan.spec.key(), "dtype": plan.recipe.dtype,
             "torch_version": torch.__version__, "gpu_name": current_gpu_name(index)}
    components = ("transformer", "vae_decoder") if plan.recipe.export.vae else ("transformer",)
    return survey_lines(cache_dir, components, where)


def _outcome(stack) -> list[str]:
    from fluxperf.cli._generate_packages import outcome_lines

    report = stack.step("export")
    return outcome_lines(report) if report else []


def _first_call(pipe, plan, args):
    """(PIL image, wall seconds) of the first pipeline call, diffusers' progress bar on (stderr)."""
    import torch

    from fluxperf.model.configs import VARIANT_DEFAULTS

    pipe.set_progress_bar_config(disable=False, desc="denoising", file=sys.stderr)
    generator = torch.Generator("cpu").manual_seed(plan.seed)  # same noise on every device
    t0 = time.perf_counter()
    with torch.inference_mode():
        image = pipe(prompt=plan.prompt, height=plan.height, width=plan.width, num_inference_steps=plan.steps,
                     guidance_scale=VARIANT_DEFAULTS[plan.variant]["guidance"],
                     max_sequence_length=plan.spec.text_tokens, generator=generator).images[0]
    if plan.device.startswith("cuda"):
        torch.cuda.synchronize()
    return image, time.perf_counter() - t0


def _summary(stack) -> list[str]:
    """One line per applied stage: what it did (fluxperf.apply.AppliedStack's per-stage details, scalars first)."""
    data = stack.to_dict()
    lines = [f"applied ({stack.recipe.name}): {', '.join(data['stages'])}; attention {data['attention_backend']}, "
             f"quantized Linear layers {data['quantized_linear_count']} ({data['quantize_kind']}), "
             f"QKV fused {data['qkv_fused']}"]
    for name, details in data["steps"].items():
        lines.append(f"  {name}: {_brief(details)}")
    return lines


def _cache_stats(pipe) -> list[str]:
    """The block cache's work in the call (fluxperf.steps.caching.stats); [] without a block cache."""
    from fluxperf.steps.caching.stats import last_call_cache_stats

    stats = last_call_cache_stats(pipe)
    if stats is None:
        return []
    return [f"{stats['kind']}: {stats['cached_steps']} of {stats['total_steps']} steps served from the cache "
            f"(steps {stats['cached_step_indices']})"]


def _brief(details, limit: int = 12) -> str:
    """`key=value` of a stage's details: scalars as they are, containers by size (the full record is to_dict())."""
    if not isinstance(details, dict):
        return str(details)
    parts = []
    for key, value in details.items():
        if isinstance(value, (dict, list, tuple)):
            if key in ("cache", "build_s", "load_s") and isinstance(value, dict):
                parts.append(f"{key}={value}")
            elif key != "runners":
                parts.append(f"{key}=<{len(value)} entries>")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts[:limit]) + (f", ... ({len(parts) - limit} more)" if len(parts) > limit else "")


def _save(image, path, fmt: str) -> None:
    from fluxperf.io import atomic_save

    atomic_save(path, lambda tmp: image.save(tmp, format=fmt))
