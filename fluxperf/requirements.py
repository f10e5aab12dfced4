"""What a recipe needs (optional packages, GPU hardware) and what of it this machine lacks, before apply() runs.

`requirements(recipe)` derives the needs from the recipe's own settings, stage by stage of `fluxperf.apply.plan`:

    attention  the backend's spec in fluxperf.steps.attention.registry: its package, and the hardware its checks accept
    quantize   torchao; for float8 also a CUDA GPU of compute capability >= 8.9
               (fluxperf.steps.quantize.check_float8_hardware); int8 runs anywhere (CPU included)
    cache_dit  cache-dit
    export     a CUDA GPU (AOTInductor packages and CUDA graphs are built for one GPU)
    parallel   N CUDA GPUs (N = ulysses_degree * ring_degree; hardware name "gpus<N>"), or an initialized process
               group of N ranks (fluxperf.steps.parallel.unavailable: what apply() checks)

Stages that are not in the plan need nothing, nor does an attention backend with `fallback="sdpa"` (apply falls
back and records why instead of refusing). `missing(recipe)` checks each need on this machine the way apply()
does (the registry's checks, `fluxperf.optional.require`, the float8 hardware check), so a recipe whose `missing`
is empty is not refused for a missing package or GPU. FLUXPERF_HIDE_PACKAGES (test-only) hides packages here too.

Importing this module is light (no torch); `requirements` imports nothing heavy either; `missing` imports torch
and, only where the hardware to run them is present, the optional packages the recipe needs (to see they load).

Example:
    >>> requirements("float8").packages
    ('fa3', 'torchao')
    >>> requirements("float8").hardware
    ('sm90', 'sm89')
    >>> missing("compile")
    []
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fluxperf.apply import plan
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.ladder import recipe_from
from fluxperf.optional import probe, require
from fluxperf.recipe import Recipe
from fluxperf.steps.attention import registry

HEAD_DIM = 128  # FLUX.1's attention head size: what the attention checks are evaluated at

# Hardware a need can name, most general first; each is probed as an attention-registry Target, so the hardware
# an attention backend needs is the first of these its checks accept (what the registry says, never retyped here).
HARDWARE: dict[str, tuple[str, registry.Target]] = {
    "cpu": ("nothing: any machine", registry.Target("cpu", "bfloat16", HEAD_DIM)),
    "cuda": ("a CUDA GPU", registry.Target("cuda", "bfloat16", HEAD_DIM, capability=(7, 0))),
    "sm80": ("an NVIDIA GPU of compute capability 8.0 or newer (Ampere+: A100, L4, H100)",
             registry.Target("cuda", "bfloat16", HEAD_DIM, capability=(8, 0))),
    "sm89": ("an NVIDIA GPU of compute capability 8.9 or newer (Ada/Hopper: L4, L40, H100, H200)",
             registry.Target("cuda", "bfloat16", HEAD_DIM, capability=(8, 9))),
    "sm90": ("an sm90 (Hopper: H100, H200) GPU", registry.Target("cuda", "bfloat16", HEAD_DIM, capability=(9, 0))),
    "rocm": ("an AMD Instinct GPU (MI300/MI350) with a ROCm build of torch",
             registry.Target("cuda", "bfloat16", HEAD_DIM, capability=(9, 4), hip=True, arch="gfx942")),
}
FLOAT8_HARDWARE = "sm89"  # fluxperf.steps.quantize.check_float8_hardware's floor (tests/test_requirements.py pins it)

HardwareCheck = Callable[[object], "UnavailableError | None"]  # (torch.device) -> the error apply would raise, or None


@dataclass(frozen=True)
class Need:
    """One thing a recipe needs.

    Args:
        kind: "package" (name: a key of fluxperf.optional.PACKAGES) or "hardware" (name: a key of HARDWARE).
        name: the package key ("fa3", "torchao", "cache_dit", "aiter") or hardware name ("cuda", "sm89", ...).
        stage: the apply() stage that needs it ("attention", "quantize", "cache_dit", "export").
        setting: the recipe setting that asks for it, e.g. "attention.backend='fa3_fp8'".
        check: for hardware, (device) -> the UnavailableError apply() would raise there, or None.
    """

    kind: str
    name: str
    stage: str
    setting: str
    check: HardwareCheck | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Requirements:
    """Everything a recipe needs, in apply()'s stage order."""

    recipe: str
    needs: tuple[Need, ...] = ()

    @property
    def packages(self) -> tuple[str, ...]:
        """Keys of fluxperf.optional.PACKAGES, each once."""
        return tuple(dict.fromkeys(n.name for n in self.needs if n.kind == "package"))

    @property
    def hardware(self) -> tuple[str, ...]:
        """Keys of HARDWARE, each once (empty: runs on a CPU)."""
        return tuple(dict.fromkeys(n.name for n in self.needs if n.kind == "hardware"))

    @property
    def gpu(self) -> bool:
        """True if some stage cannot run without a GPU."""
        return bool(self.hardware)


def requirements(recipe) -> Requirements:
    """What `recipe` (a Recipe, a rung name or a dict, see fluxperf.ladder.recipe_from) needs. Probes nothing.

    Raises:
        RecipeError: an invalid recipe or unknown rung.
    """
    recipe = recipe_from(recipe)
    needs = tuple(need for stage in plan(recipe) for need in _STAGE_NEEDS.get(stage, _nothing)(recipe))
    return Requirements(recipe.name, needs)


def missing(recipe, device=None, *, load: bool = True) -> list[str]:
    """One line per need of `recipe` this machine lacks: the setting, the package or hardware, and how to get it.

    Args:
        recipe: a Recipe, a rung name or a dict (fluxperf.ladder.recipe_from).
        device: the torch device the pipeline would run on (default: "cuda" if torch sees one, else "cpu").
        load: import each installed package the recipe needs, as apply() would, so a build that fails to import
            is reported too. False: installed (found on the path) counts as present and nothing is imported; for
            test skips, where a broken build must fail the test rather than skip it.
    Returns:
        [] when apply() would refuse nothing for lack of a package or hardware; else lines such as
        "quantize.kind='float8': torchao is not available: ... Fix: pip install 'fluxperf[torchao]' ...".
        A package is imported only where its stage's hardware is present (no FA3 import on a CPU machine).
    Raises:
        RecipeError: an invalid recipe or unknown rung.
    """
    import torch

    reqs = requirements(recipe)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    lines, no_hardware = [], set()
    for need in reqs.needs:
        if need.kind == "hardware":
            error = need.check(device)
            if error is not None:
                no_hardware.add(need.stage)
        else:
            error = _package_error(need.name, load=load and need.stage not in no_hardware)
        if error is not None:
            lines.append(f"{need.setting}: {error}")
    return lines


# -- per stage: recipe -> needs ----------------------------------------------------------------------------------
def _nothing(recipe: Recipe) -> tuple[Need, ...]:
    return ()


def _attention_needs(recipe: Recipe) -> tuple[Need, ...]:
    cfg = recipe.attention
    if cfg.fallback == "sdpa":  # apply installs SDPA and records the reason instead of refusing
        return ()
    spec, setting = registry.spec(cfg.backend), f"attention.backend={cfg.backend!r}"
    hardware = _backend_hardware(cfg.backend, recipe.dtype)
    needs = []
    if hardware != "cpu":
        needs.append(Need("hardware", hardware, "attention", setting, _attention_check(cfg.backend, recipe.dtype)))
    if spec.package:
        needs.append(Need("package", spec.package, "attention", setting))
    return tuple(needs)


def _quantize_needs(recipe: Recipe) -> tuple[Need, ...]:
    setting = f"quantize.kind={recipe.quantize.kind!r}"
    package = Need("package", "torchao", "quantize", setting)
    if recipe.quantize.kind == "int8":  # torchao's int8 matmul has CPU and CUDA paths (fluxperf.steps.quantize)
        return (package,)
    return (Need("hardware", FLOAT8_HARDWARE, "quantize", setting, _float8_check), package)


def _cache_dit_needs(recipe: Recipe) -> tuple[Need, ...]:
    return (Need("package", "cache_dit", "cache_dit", "cache_dit.enabled=True"),)


def _export_needs(recipe: Recipe) -> tuple[Need, ...]:
    return (Need("hardware", "cuda", "export", "export.enabled=True", _export_check),)


def _parallel_needs(recipe: Recipe) -> tuple[Need, ...]:
    cfg = recipe.parallel

    def check(device) -> UnavailableError | None:
        from fluxperf.steps.parallel import unavailable

        return unavailable(cfg, device)

    setting = f"parallel.enabled=True (ulysses_degree={cfg.ulysses_degree}, ring_degree={cfg.ring_degree})"
    return (Need("hardware", f"gpus{cfg.world_size}", "parallel", setting, check),)


def _compile_needs(recipe: Recipe) -> tuple[Need, ...]:
    if not recipe.compile.cuda_graph:
        return ()
    return (Need("hardware", "cuda", "compile", "compile.cuda_graph=True", _cuda_graph_check),)


def _cuda_graph_check(device) -> UnavailableError | None:
    import torch

    if device.type == "cuda" and torch.cuda.is_available():
        return None
    return UnavailableError("CUDA graphs", f"the pipeline would run on {device.type}, and compile.cuda_graph records "
                            "CUDA graphs", "run on a CUDA machine, or set compile.cuda_graph=False")


_STAGE_NEEDS: dict[str, Callable[[Recipe], tuple[Need, ...]]] = {
    "attention": _attention_needs,
    "compile": _compile_needs,
    "quantize": _quantize_needs,
    "cache_dit": _cache_dit_needs,
    "export": _export_needs,
    "parallel": _parallel_needs,
}


# -- hardware -----------------------------------------------------------------------------------------------------
def _backend_hardware(backend: str, dtype: str) -> str:
    """The most general HARDWARE name whose probe target passes every device/dtype check of `backend`.

    Raises:
        RecipeError: no hardware runs it (e.g. a dtype it refuses; Recipe.validate normally refuses that first).
    """
    reasons = {}
    for name, (_, target) in HARDWARE.items():
        found = _failed_checks(backend, registry.Target(target.device_type, dtype, target.head_dim,
                                                        capability=target.capability, hip=target.hip,
                                                        arch=target.arch))
        if not found:
            return name
        reasons[name] = found
    raise RecipeError(f"attention.backend={backend!r} runs on no hardware in {dtype}: {reasons}. "
                      "Fix: dtype='bfloat16' or attention.backend='sdpa'.")


def _failed_checks(backend: str, target: registry.Target) -> list[str]:
    """Every unmet device/dtype/shape constraint of `backend` on `target` (the package is not looked at)."""
    return [r for check in registry.spec(backend).checks if (r := check(backend, target)) is not None]


def _attention_check(backend: str, dtype: str) -> HardwareCheck:
    def check(device) -> UnavailableError | None:
        found = _failed_checks(backend, registry.target_for(device, dtype, HEAD_DIM))
        return registry.unavailable(backend, "; ".join(found)) if found else None

    return check


def _float8_check(device) -> UnavailableError | None:
    from fluxperf.steps.quantize import check_float8_hardware

    try:
        check_float8_hardware(device)
    except UnavailableError as exc:
        return exc
    return None


def _export_check(device) -> UnavailableError | None:
    import torch

    if device.type == "cuda" and torch.cuda.is_available():
        return None
    return UnavailableError("AOTInductor export", f"the pipeline would run on {device.type}, and export needs a CUDA "
                            "GPU (packages and CUDA graphs are built for one GPU)",
                            "run on a CUDA machine, or use a CPU rung (see fluxperf.ladder.CPU_RUNGS)")


# -- packages -----------------------------------------------------------------------------------------------------
def _package_error(key: str, *, load: bool) -> UnavailableError | None:
    """The error fluxperf.optional.require(key) raises, or None. With load=False an installed package is not
    imported (e.g. its stage lacks the hardware anyway, and an FA3 build may not even load on a CPU machine)."""
    if not load and probe(key):
        return None
    try:
        require(key)
    except UnavailableError as exc:
        return exc
    return None
