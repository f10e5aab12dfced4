"""torch.export + AOTInductor packages of the FLUX transformer and VAE decoder, run under CUDA graphs.

flux-fast's export hard-coded 1024x1024 example shapes and sniffed the model kind from class names
(DESIGN.md, lesson 3). Here every example input comes from fluxperf.model.shapes for the given ShapeSpec, the
packages are cached by a full key (fluxperf.steps.export.cache), and the pipeline keeps calling
`pipe.transformer(...)` / `pipe.vae.decode(...)` as usual: those two entry points are replaced by adapters
that map the pipeline's keyword call onto the package's fixed positional inputs, check shapes, and cast
dtypes (the pipelines pass bf16 position ids; the package takes what fluxperf.model.shapes builds).

How the package gets its weights is the `weights` mode (argument of apply_export, else $FLUXPERF_EXPORT_WEIGHTS,
else "user"):
  "user": compiled WITHOUT weights (`aot_inductor.package_constants_in_so=False`); after loading, the live module's
          tensors are handed over with `load_constants(..., user_managed=True)`: no second copy of the 24 GB of
          weights, and a cached package is valid for any weights of the same model.
  "copy": compiled without weights; `load_constants(..., user_managed=False)` copies them into the package's own
          buffer (twice the weight memory; nothing is shared with the live module).
  "so":   weights packaged in the .so at build time (AOTInductor's default path, no load_constants at all); the
          cache key then includes a fingerprint of the weights. The fallback if the constant-loading path fails
          (scripts/probes/diag_export.py tells which path works on a machine).

Example (on a CUDA machine):
    >>> from fluxperf.model.shapes import ShapeSpec            # doctest: +SKIP
    >>> report = apply_export(pipe, rung("export"), ShapeSpec("schnell", 1024, 1024))  # doctest: +SKIP
    >>> report["cache"]                                   # doctest: +SKIP
    {'transformer': 'miss', 'vae_decoder': 'miss'}
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from pathlib import Path
from typing import Any

from fluxperf.errors import FluxperfError, RecipeError, UnavailableError
from fluxperf.steps.export import cache as ec
from fluxperf.steps.export import loader as aoti_loader
from fluxperf.steps.export.call import (
    TRANSFORMER_INPUTS,
    ExampleInputs,
    ExportedTransformerForward,
    ExportedVaeDecode,
    TransformerExportModule,
    VaeDecodeExportModule,
    transformer_example,
    vae_example,
)
from fluxperf.steps.export.code import code_fingerprint
from fluxperf.steps.export.cudagraph import CudaGraphRunner
from fluxperf.steps.export.loader import LibstdcxxPreloadError
from fluxperf.steps.export.weights import WeightsGuard, WeightsReplacedError, flat_constants

__all__ = ["apply_export", "remove_export", "check_exportable", "cache_hooks", "export_program", "compile_package",
           "load_package", "constants_map", "install_adapters", "inductor_configs_for", "ExportError",
           "ExportCacheConflictError", "TRANSFORMER_INPUTS", "ExampleInputs", "transformer_example", "vae_example",
           "TransformerExportModule", "VaeDecodeExportModule", "WEIGHT_MODES", "WEIGHTS_ENV", "weights_mode",
           "package_key", "LibstdcxxPreloadError", "WeightsReplacedError"]

WEIGHT_MODES = ("user", "copy", "so")
WEIGHTS_ENV = "FLUXPERF_EXPORT_WEIGHTS"

_ORIGINAL = "_fluxperf_export_original"  # attribute holding what apply_export replaced


class ExportError(FluxperfError, RuntimeError):
    """Export / AOTInductor packaging cannot proceed (state of the pipeline, missing weights, ...)."""


class ExportCacheConflictError(ExportError):
    """Block caching (cache-dit, diffusers' first-block cache & co.) is active on the pipeline to export."""


# -- checks ----------------------------------------------------------------------------------------------
def cache_hooks(pipe) -> list[str]:
    """Describe every block-caching mechanism active on `pipe` (empty list: none).

    Looks for diffusers' CacheMixin state (`transformer.is_cache_enabled`), diffusers hook registries
    (`_diffusers_hook` on the transformer or its blocks) and cache-dit's markers (`_is_cached` on the
    transformer or on the pipeline class, whose __call__ cache-dit patches).
    """
    transformer, found = pipe.transformer, []
    if getattr(transformer, "is_cache_enabled", False):
        found.append(f"diffusers {type(transformer._cache_config).__name__} (transformer.enable_cache)")
    for name, module in transformer.named_modules():
        registry = module.__dict__.get("_diffusers_hook")
        hooks = sorted(getattr(registry, "hooks", {}) or {})
        if hooks:
            found.append(f"diffusers hooks {hooks} on {'transformer' + ('.' + name if name else '')}")
    if transformer.__dict__.get("_is_cached") or "_original_forward" in transformer.__dict__:
        found.append("cache-dit (transformer._is_cached: its forward is patched)")
    if getattr(type(pipe), "_is_cached", False):
        found.append(f"cache-dit ({type(pipe).__name__}._is_cached: the pipeline class's __call__ is patched)")
    return found


def check_exportable(pipe) -> None:
    """Raise ExportCacheConflictError if block caching is active on `pipe`, ExportError if already exported."""
    found = cache_hooks(pipe)
    if found:
        raise ExportCacheConflictError(
            f"cannot export a pipeline with block caching active: {'; '.join(found)}. Caching decides per step, in "
            "Python, whether to run the transformer blocks; an AOTInductor package is one opaque compiled graph (and a "
            "CUDA graph replays fixed kernels), so there is no place for that decision and the cache would silently "
            "stop working or be bypassed. Fix: disable the cache (cache_dit.disable_cache(pipe) / "
            "transformer.disable_cache()) before export, or use compile instead of export with caching.")
    if _ORIGINAL in pipe.transformer.__dict__:
        raise ExportError("this pipeline's transformer already runs an exported package. "
                          "Fix: fluxperf.steps.export.apply.remove_export(pipe) first, or reuse the existing report.")


def _require_cuda(pipe) -> None:
    import torch

    device = pipe.transformer.device
    if not torch.cuda.is_available():
        raise UnavailableError("AOTInductor export", "no CUDA device is available (export on CPU is not a supported "
                               "rung: packages and CUDA graphs are built for one GPU)",
                               "run on a CUDA machine, or use a CPU rung (see fluxperf.ladder.CPU_RUNGS)")
    if device.type != "cuda":
        raise UnavailableError("AOTInductor export", f"the transformer is on {device}, not on a CUDA device",
                               "move the pipeline first: pipe.to('cuda')")


# -- the steps -------------------------------------------------------------------------------------------
def weights_mode(value: str | None = None) -> str:
    """The weights mode to use: `value`, else $FLUXPERF_EXPORT_WEIGHTS, else "user" (see the module docstring).

    Raises:
        RecipeError: not one of WEIGHT_MODES (the value and where it came from are named).

    Example:
        >>> weights_mode("so")
        'so'
    """
    source = "weights=" if value is not None else f"${WEIGHTS_ENV}="
    mode = value if value is not None else (os.environ.get(WEIGHTS_ENV) or "user")
    if mode not in WEIGHT_MODES:
        raise RecipeError(f"{source}{mode!r} is not an export weights mode. Fix: use one of {list(WEIGHT_MODES)} "
                          "('user': zero-copy live weights, 'copy': the package copies them, 'so': weights built "
                          "into the package).")
    return mode


def inductor_configs_for(recipe, weights: str = "user") -> dict[str, Any]:
    """AOTInductor's `inductor_configs`: the recipe's inductor flags, plus where the weights go (`weights` mode)."""
    return {**recipe.inductor_flags.options(), "aot_inductor.package_constants_in_so": weights_mode(weights) == "so"}


def export_program(module, example: ExampleInputs, *, strict: bool = False):
    """torch.export.export(module, example.args) under no_grad.

    Args:
        module: TransformerExportModule or VaeDecodeExportModule (positional tensor inputs, one tensor out).
        example: inputs from transformer_example / vae_example.
        strict: torch.export strict mode (False: trace the Python as is; diffusers needs that).
    """
    import torch

    with torch.no_grad():
        return torch.export.export(module, example.args, strict=strict)


def compile_package(program, path: str, inductor_configs: dict[str, Any]) -> str:
    """AOTInductor-compile an ExportedProgram into the .pt2 file `path`; configs are scoped to this call."""
    import torch._inductor

    return torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                    inductor_configs=dict(inductor_configs))


def constants_map(module) -> dict:
    """FQN -> tensor of every parameter and buffer under the names AOTInductor uses for the package's constants,
    tensor-subclass weights (torchao) also as their flattened inner tensors (fluxperf.steps.export.weights)."""
    return flat_constants(module)


def _device_index(module) -> int:
    """CUDA index of the module's weights (the device the package must run on); -1 for a CPU module."""
    import torch

    device = next(module.parameters()).device
    if device.type != "cuda":
        return -1
    return device.index if device.index is not None else torch.cuda.current_device()


def load_package(path: str | Path, module, *, single_threaded: bool, weights: str = "user"):
    """Load a .pt2 package on the module's device and give it the module's weights (`weights` mode).

    The load goes through fluxperf.steps.export.loader (refused, not crashed, where the package's native code would
    segfault this process). The returned package carries `_fluxperf_guard`, a WeightsGuard over the module's
    tensors: the adapters call its `check()` before every call (weights replaced after export, issue 13.4).

    Args:
        path: the package.
        module: the wrapper module it was exported from (its parameter names are the package's constant names).
        single_threaded: aoti_load_package(run_single_threaded=...): True is required for CUDA-graph capture.
        weights: "user" (hand over the live tensors, no copy), "copy" (the package copies them) or "so" (the
            package was built with its weights; nothing is loaded).

    Raises:
        LibstdcxxPreloadError: loading needs the system libstdc++ preloaded (the LD_PRELOAD fix is named).
        ExportError: the package needs constants the module does not have (names listed).
    """
    import torch
    import torch._inductor

    mode, index = weights_mode(weights), _device_index(module)
    kwargs = {"run_single_threaded": single_threaded}
    if index >= 0 and "device_index" in inspect.signature(torch._inductor.aoti_load_package).parameters:
        kwargs["device_index"] = index  # not "the current device": the one the weights live on
    available = constants_map(module)
    with torch.cuda.device(index) if index >= 0 else contextlib.nullcontext():
        loaded = aoti_loader.load(path, **kwargs)
        wanted = list(loaded.get_constant_fqns())
        if mode == "so":
            loaded._fluxperf_guard = WeightsGuard(None, module, [n for n in wanted if n in available], mode)
            return loaded
        missing = [n for n in wanted if n not in available]
        if missing:
            raise ExportError(
                f"package {path} needs {len(missing)} constants the live module does not have, e.g. {missing[:5]}; "
                f"the module has e.g. {list(available)[:5]}. This happens when tracing lifted a tensor constant, or a "
                "tensor subclass flattens differently from torch's UnwrapTensorSubclass numbering. Fix: "
                f"delete the package and rebuild; if it persists, export with weights='so' (${WEIGHTS_ENV}=so).")
        # detached plain tensors (same storage): the package must not see autograd state; `constants` stays
        # referenced from the loaded package for its whole life, since with user_managed it reads these tensors
        constants = {n: available[n].detach() for n in wanted}
        loaded.load_constants(constants, check_full_update=True, user_managed=(mode == "user"))
    loaded._fluxperf_constants = constants if mode == "user" else None
    loaded._fluxperf_guard = WeightsGuard(loaded if mode == "user" else None, module, wanted, mode)
    return loaded


def package_key(component: str, module, spec, recipe, weights: str = "user") -> ec.PackageKey:
    """The cache key of one component's package (module: the TransformerExportModule / VaeDecodeExportModule).

    Covers the traced code (versions and source, fluxperf.steps.export.code) besides shapes, recipe and model. With
    weights="so" the weights are inside the package, so a fingerprint of them joins the key.
    """
    mode = weights_mode(weights)
    inner = module.transformer if component == "transformer" else module.vae
    param = next(inner.parameters())
    fingerprint = ec.module_fingerprint(inner)
    if mode == "so":
        fingerprint = {**fingerprint, "weights": ec.weights_fingerprint(inner)}
    index = param.device.index or 0
    return ec.make_key(component, spec, str(param.dtype), ec.recipe_graph_parts(recipe, inductor_configs_for(recipe, mode)),
                       fingerprint, code=code_fingerprint(inner), gpu_name=ec.current_gpu_name(index))


def _package(component: str, module, example: ExampleInputs, spec, recipe, cache_dir: Path,
             cudagraphs: bool, weights: str) -> tuple[Any, dict]:
    """Build (or reuse) and load one package; return (runner, facts for the report)."""
    configs = inductor_configs_for(recipe, weights)
    key = package_key(component, module, spec, recipe, weights)

    def build(tmp_path: str) -> None:
        compile_package(export_program(module, example), tmp_path, configs)

    inner = module.transformer if component == "transformer" else module.vae
    path, status, build_s = ec.get_or_build(cache_dir, key, build, inputs=example.signature(), spec=vars(spec),
                                            inductor_configs=configs, recipe=recipe.to_dict(), weights=weights,
                                            code=code_fingerprint(inner))
    start = time.perf_counter()
    loaded = load_package(path, module, single_threaded=cudagraphs, weights=weights)
    load_s = time.perf_counter() - start
    runner = CudaGraphRunner(loaded, name=component, max_graphs=4) if cudagraphs else loaded
    facts = {"path": str(path), "cache": status, "build_s": round(build_s, 3), "load_s": round(load_s, 3),
             "key": key.as_dict(), "runner": runner, "guard": loaded._fluxperf_guard}
    return runner, facts


# -- public entry point ----------------------------------------------------------------------------------
def apply_export(pipe, recipe, spec, *, cache_dir=None, weights: str | None = None) -> dict:
    """Export / AOTInductor-compile (or load from cache) the transformer and, if recipe.export.vae, the VAE
    decoder for `spec`, and make the pipeline run them (under CUDA graphs if recipe.export.cudagraphs).

    Args:
        pipe: a FluxPipeline / FluxKontextPipeline on a CUDA device.
        recipe: fluxperf.recipe.Recipe with export.enabled (its inductor flags become inductor_configs).
        spec: fluxperf.model.shapes.ShapeSpec of the calls to come (variant, height, width, batch, text length).
        cache_dir: package cache (default: recipe.export.cache_dir, $FLUXPERF_CACHE, ~/.cache/fluxperf/aoti).
        weights: "user" | "copy" | "so" (default: $FLUXPERF_EXPORT_WEIGHTS, else "user"; see the module docstring).

    Returns:
        {"packages": {component: path}, "cache": {component: "hit"|"miss"}, "build_s": {...}, "load_s": {...},
         "cudagraphs": bool, "runners": {component: CudaGraphRunner or loaded package}, "spec": spec.key(),
         "keys": {component: key dict}, "weights": the mode used}

    Raises:
        ExportCacheConflictError: block caching is active on the pipeline.
        UnavailableError: no CUDA (export on CPU is not a supported rung).
        RecipeError: export not enabled in the recipe, or spec.variant does not match the pipeline.
        LibstdcxxPreloadError: the built package would crash this process unless Python starts with the system
            libstdc++ preloaded (the exact LD_PRELOAD line is named; the package stays cached for that run).

    Example:
        >>> report = apply_export(pipe, rung("export"), ShapeSpec("dev", 768, 1360), cache_dir="/tmp/aoti")  # doctest: +SKIP
        >>> report["runners"]["transformer"].stats.replays  # doctest: +SKIP
        0
    """
    from fluxperf.model.build import variant_of
    from fluxperf.model.configs import dims_of_pipeline

    if not recipe.export.enabled:
        raise RecipeError(f"apply_export got recipe {recipe.name!r} with export.enabled=False. "
                          "Fix: use the 'export' rung or set export.enabled=True.")
    check_exportable(pipe)
    _require_cuda(pipe)
    variant = variant_of(pipe)
    if spec.variant != variant:
        raise RecipeError(f"spec.variant={spec.variant!r} but the pipeline is {variant!r} (its inputs differ: guidance, "
                          f"image tokens). Fix: ShapeSpec({variant!r}, {spec.height}, {spec.width}, batch={spec.batch}).")
    weights = weights_mode(weights)
    cache_dir = Path(cache_dir or recipe.export.cache_dir or ec.default_cache_dir()).expanduser()
    dims, cudagraphs = dims_of_pipeline(pipe), recipe.export.cudagraphs
    t = pipe.transformer
    t_example = transformer_example(spec, dims, device=t.device, dtype=t.dtype)
    t_runner, t_facts = _package("transformer", TransformerExportModule(t), t_example, spec, recipe, cache_dir,
                                 cudagraphs, weights)
    facts = {"transformer": t_facts}
    v_runner = v_example = None
    if recipe.export.vae:
        vae = pipe.vae
        v_example = vae_example(spec, dims, device=vae.device, dtype=vae.dtype)
        v_runner, facts["vae_decoder"] = _package("vae_decoder", VaeDecodeExportModule(vae), v_example, spec, recipe,
                                                  cache_dir, cudagraphs, weights)
    install_adapters(pipe, spec, t_runner, t_example, v_runner, v_example, transformer_guard=t_facts["guard"],
                     vae_guard=facts["vae_decoder"]["guard"] if v_runner is not None else None)
    return {
        "packages": {c: f["path"] for c, f in facts.items()},
        "cache": {c: f["cache"] for c, f in facts.items()},
        "build_s": {c: f["build_s"] for c, f in facts.items()},
        "load_s": {c: f["load_s"] for c, f in facts.items()},
        "cudagraphs": cudagraphs,
        "runners": {c: f["runner"] for c, f in facts.items()},
        "spec": spec.key(),
        "cache_dir": str(cache_dir),
        "keys": {c: f["key"] for c, f in facts.items()},
        "weights": weights,
    }


def install_adapters(pipe, spec, transformer_runner, transformer_ex: ExampleInputs, vae_runner=None,
                     vae_ex: ExampleInputs | None = None, *, transformer_guard: WeightsGuard | None = None,
                     vae_guard: WeightsGuard | None = None) -> None:
    """Point `pipe.transformer.forward` (and `pipe.vae.decode`) at runners that take the package's positional
    inputs. Works with any callable runner (a loaded package, a CudaGraphRunner, or an eager module in tests).
    A guard (load_package's `_fluxperf_guard`) is checked before every call: replaced weights are followed
    (weights="user": constants re-pointed, captured graphs dropped) or refused (fluxperf.steps.export.weights)."""
    check_exportable(pipe)
    t = pipe.transformer
    t.__dict__[_ORIGINAL] = t.__dict__.get("forward")
    t.forward = ExportedTransformerForward(transformer_runner, transformer_ex, spec, guard=transformer_guard)
    if vae_runner is not None:
        pipe.vae.__dict__[_ORIGINAL] = pipe.vae.__dict__.get("decode")
        pipe.vae.decode = ExportedVaeDecode(vae_runner, vae_ex, spec, guard=vae_guard)


def remove_export(pipe) -> bool:
    """Undo install_adapters / apply_export: the modules run their own forward/decode again. True if undone."""
    undone = False
    for module, attr in ((pipe.transformer, "forward"), (pipe.vae, "decode")):
        if _ORIGINAL in module.__dict__:
            runner = getattr(module.__dict__.get(attr), "runner", None)
            if hasattr(runner, "clear"):
                runner.clear()  # drop captured graphs now, before the package whose kernels they replay
            previous = module.__dict__.pop(_ORIGINAL)
            if previous is None:
                module.__dict__.pop(attr, None)
            else:
                setattr(module, attr, previous)
            undone = True
    return undone
