"""`fluxperf generate`: every argument checked and resolved into a `Plan` before any model is built.

A bad combination raises `OptionError` (fluxperf.measure.ladder_run) with one line: the option, the value, the rule
and the fix; the command exits 2 with it. What is checked here, in order: --size with --checkpoint, the device
defaults, the switches (fluxperf.cli._generate_switches, plus the CPU switch-off, which is reported in
`Plan.notes`), --cache-dit-config (schnell and export refused as flux-fast's gen_image.py does; the YAML itself;
warm-up vs --steps; Fn + Bn vs the synthetic model's blocks), --use-cached-model / --cache-dir (need export), the
Recipe's own rules (worded in flags), the packages and hardware the recipe needs (fluxperf.requirements.missing),
and the paths: --trace-file (fluxperf.measure.trace.check_trace_path) and the output file (a suffix naming a format
PIL can write an RGB image in; not a directory, a name the file system accepts, a writable directory:
fluxperf.io.check_writable_file). Each path is `~`-expanded once, here, and the Plan holds that path: the one checked
is the one written. --checkpoint is checked by its argparse type (fluxperf.cli._types.checkpoint_type).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPTION_PREFIX = "fluxperf generate: error: "


@dataclass(frozen=True)
class Plan:
    """A checked `fluxperf generate` run.

    Attributes:
        variant, size, device: what is built ("schnell"/"dev", "tiny"/"full", "cpu"/"cuda[:N]"); size is None with
            a checkpoint.
        height, width: pixels (multiples of 16); steps: denoising steps; seed: the noise seed (the synthetic
            weights always use weight seed 0, so --seed changes the image, not the model).
        prompt, checkpoint: as given.
        output: the image file (user-expanded: the path checked is the path written); output_format: its PIL
            format name (from the suffix, e.g. "PNG"), passed to Image.save so the temp name cannot change it.
        trace_file: the checked (user-expanded) --trace-file, or None.
        recipe: the fluxperf.recipe.Recipe to apply (export.cache_dir is set at run time).
        notes: lines to print before building (e.g. what the CPU switched off).
        use_cached: --use-cached-model; cache_dir: the package cache it reuses (None without it).
    """

    variant: str
    size: str | None
    device: str
    height: int
    width: int
    steps: int
    seed: int
    prompt: str
    checkpoint: str | None
    output: Path
    output_format: str
    trace_file: Path | None
    recipe: Any
    notes: tuple[str, ...]
    use_cached: bool
    cache_dir: str | None

    @property
    def spec(self):
        """The fluxperf.model.shapes.ShapeSpec of the call (export packages are built for it)."""
        from fluxperf.model.shapes import ShapeSpec

        return ShapeSpec(self.variant, self.height, self.width)


def make_plan(args) -> Plan:
    """Check every argument of `args` (argparse namespace of `fluxperf generate`) and resolve the defaults.

    Raises:
        OptionError: one line naming the option, the value, the rule and the fix.
    """
    import torch

    from fluxperf.cli._generate_switches import SWITCHES, cpu_switch_off, switched_recipe_dict
    from fluxperf.measure.ladder_run import OptionError
    from fluxperf.model.configs import VARIANT_DEFAULTS

    if args.checkpoint and args.size:
        raise OptionError(f"--size {args.size} with --checkpoint {args.checkpoint!r}: --size picks the synthetic "
                          "model's architecture, a checkpoint brings its own. Fix: drop --size.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = None if args.checkpoint else (args.size or ("full" if device.startswith("cuda") else "tiny"))
    side = 64 if size == "tiny" else 1024
    steps = args.steps if args.steps is not None else VARIANT_DEFAULTS[args.variant]["steps"]

    given = tuple(s.flag for s in SWITCHES if getattr(args, s.dest))
    auto = cpu_switch_off(device, given)
    data = switched_recipe_dict(given + tuple(s.flag for s, _ in auto))
    notes = []
    if auto:
        why = "; ".join(f"{s.flag} ({reason})" for s, reason in auto)
        notes.append(f"note: on {device} the GPU-only steps are off: {why}. Pass these switches yourself to "
                     "silence this note.")
    if args.cache_dit_config:
        data["cache_dit"] = _cache_dit_section(args, data, steps, size, OptionError)
    cache_dir = _package_cache(args, data, device, OptionError)
    recipe = _recipe(data, OptionError)
    _check_needs(recipe, device, OptionError)
    trace_file = None
    if args.trace_file:
        from fluxperf.measure.trace import check_trace_path

        trace_file = check_trace_path(args.trace_file, option="--trace-file", error=OptionError)
    output, output_format = check_output_file(args.output_file)
    return Plan(variant=args.variant, size=size, device=device,
                height=args.height if args.height is not None else side,
                width=args.width if args.width is not None else side, steps=steps, seed=args.seed,
                prompt=args.prompt, checkpoint=args.checkpoint, output=output, output_format=output_format,
                trace_file=trace_file, recipe=recipe, notes=tuple(notes), use_cached=args.use_cached_model,
                cache_dir=cache_dir)


def _cache_dit_section(args, data: dict, steps: int, size: str | None, error) -> dict:
    """The recipe's cache_dit section from the YAML; refused for schnell and with export (flux-fast refuses both)."""
    from fluxperf.cli._generate_cache_dit import OPTION, load_cache_dit_yaml
    from fluxperf.model import configs as mc

    where = f"{OPTION} {args.cache_dit_config!r}"
    if args.variant == "schnell":
        raise error(f"{where} with --variant schnell: schnell samples in 4 steps, fewer than DBCache's warm-up "
                    "steps, so nothing could be served from the cache. Fix: --variant dev, or drop "
                    f"{OPTION}.")
    if data["export"]["enabled"]:
        raise error(f"{where} with export on: cache-dit decides per step in Python whether to run the blocks, and "
                    "an exported AOTInductor package is one opaque graph. Fix: add --no-export (torch.compile) "
                    "or --no-compile --no-flags (eager).")
    section = load_cache_dit_yaml(args.cache_dit_config, steps=steps)
    warmup = section.get("max_warmup_steps", 8)  # CacheDitConfig's default
    if steps <= warmup:
        raise error(f"{where}: max_warmup_steps={warmup} with --steps {steps}: every step is a warm-up step, "
                    f"nothing can be cached. Fix: --steps {warmup + 1} or more, or a smaller max_warmup_steps.")
    if size is not None:  # a checkpoint's block count is known only once loaded (apply() checks it then)
        cfg = mc.transformer_config(args.variant, size)
        blocks = cfg["num_layers"] + cfg["num_single_layers"]
        fn, bn = section.get("Fn", 12), section.get("Bn", 12)  # CacheDitConfig's defaults
        if fn + bn >= blocks:
            raise error(f"{where}: Fn_compute_blocks={fn} + Bn_compute_blocks={bn} >= the {size} model's {blocks} "
                        f"blocks: no middle block is left to cache. Fix: Fn + Bn < {blocks} (e.g. "
                        "Fn_compute_blocks: 1, Bn_compute_blocks: 0).")
    return section


def _package_cache(args, data: dict, device: str, error) -> str | None:
    """The package cache --use-cached-model reuses (None without it: packages are built for this run only)."""
    from fluxperf.steps.export.cache import default_cache_dir

    if args.cache_dir and not args.use_cached_model:
        raise error(f"--cache-dir {args.cache_dir!r} without --use-cached-model: without it the export packages "
                    "are built for this run only. Fix: add --use-cached-model, or drop --cache-dir.")
    if not args.use_cached_model:
        return None
    if not data["export"]["enabled"]:
        why = (f"export needs a CUDA GPU and the device is {device}" if device.startswith("cpu")
               else "--no-export / --no-compile turned it off")
        raise error(f"--use-cached-model with export off ({why}): there is no package to reuse. "
                    "Fix: drop --use-cached-model" + (", or run on a CUDA machine." if device.startswith("cpu")
                                                      else ", or drop --no-export / --no-compile."))
    return str(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir())


def _recipe(data: dict, error):
    from fluxperf.cli._generate_switches import in_flags
    from fluxperf.errors import RecipeError
    from fluxperf.recipe import Recipe

    try:
        return Recipe.from_dict({**data, "name": "generate"})
    except RecipeError as exc:
        raise error(in_flags(str(exc))) from None


def _check_needs(recipe, device: str, error) -> None:
    """Refuse a recipe whose packages or hardware this machine lacks, naming the switch that drops each step."""
    from fluxperf.cli._generate_switches import in_flags
    from fluxperf.requirements import missing

    lines = missing(recipe, device)
    if lines:
        raise error(in_flags("this machine lacks what the recipe needs: " + " | ".join(lines)
                             + " Fix: install it, or switch the step off"))


def check_output_file(path: str) -> tuple[Path, str]:
    """(the output image path, user-expanded; its PIL format name), refused unless PIL can write an RGB image (what
    the pipeline returns) in the format its suffix names and the file can be written atomically there.

    The format is proven by saving a 16x16 RGB image (the smallest FLUX image: sides are multiples of 16) to memory:
    PIL registers save handlers it cannot use for RGB (XBM, MSP and Palm take 1-bit images, BLP palette ones) and
    stub handlers that raise until a plugin is installed (HDF5, GRIB, BUFR, WMF/EMF). The file: not a directory,
    a name the file system accepts, a writable directory (created here): fluxperf.io.check_writable_file.

    Raises:
        OptionError: one line with the path, the rule and the fix.
    """
    import io

    from PIL import Image

    from fluxperf.io import check_writable_file
    from fluxperf.measure.ladder_run import OptionError

    with contextlib.suppress(OSError):  # e.g. a name too long: check_writable_file words it below
        if Path(path).expanduser().is_dir():  # said before the suffix: a directory has none
            check_writable_file(path, option="--output-file", error=OptionError)
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    why = "PIL has no writer for it" if fmt is None or fmt not in Image.SAVE else None
    if why is None:
        try:
            Image.new("RGB", (16, 16)).save(io.BytesIO(), format=fmt)
        except (OSError, ValueError) as exc:  # "cannot write mode RGB as XBM", "HDF5 save handler not installed"
            why = f"PIL cannot write an RGB image as {fmt} ({type(exc).__name__}: {exc})"
    if why:
        raise OptionError(f"--output-file {path!r}: {suffix or 'no suffix'!r} is not an image format PIL can write "
                          f"an RGB image in (the format comes from the suffix; {why}). Fix: end it in .png, .jpg "
                          "or .webp.")
    return check_writable_file(path, option="--output-file", error=OptionError), fmt
