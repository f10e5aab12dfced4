"""The ablation ladder: flux-fast's named rungs, each one step more than the last.

    baseline (fp32 eager) -> bf16 -> compile -> fused_qkv -> channels_last -> fa3_fp8 -> float8 -> flags -> export

Each rung is a `Recipe`; any rung can be built from its name or from a dict, and extra rungs (caching,
other attention backends, the FLUX.1-dev A100/H100 experiment table's configurations, the flux-fast-faithful
compile) are registered next to the ladder without being part of its spine.

Example:
    >>> rung("float8").quantize.kind
    'float8'
    >>> [r for r in LADDER][:3]
    ['baseline', 'bf16', 'compile']
"""

from __future__ import annotations

from typing import Any

from fluxperf.errors import RecipeError
from fluxperf.recipe import Recipe

# Each entry: rung name -> the changes it adds on top of the previous rung (nested dicts merge).
_STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("baseline", {"dtype": "float32"}),
    ("bf16", {"dtype": "bfloat16"}),
    ("compile", {"compile": {"enabled": True}}),
    ("fused_qkv", {"fuse_qkv": True}),
    ("channels_last", {"channels_last": True}),
    ("fa3_fp8", {"attention": {"backend": "fa3_fp8"}}),
    ("float8", {"quantize": {"kind": "float8"}}),
    ("flags", {"inductor_flags": {"enabled": True}}),
    ("export", {"compile": {"enabled": False}, "export": {"enabled": True}}),
)

LADDER: tuple[str, ...] = tuple(name for name, _ in _STEPS)

# Rungs beside the spine: (base rung, changes). Caching rungs build on "flags" (compile, no export).
_EXTRA: dict[str, tuple[str, dict[str, Any]]] = {
    "compile_whole": ("compile", {"compile": {"scope": "whole"}}),
    "float8_only": ("compile", {"quantize": {"kind": "float8"}}),
    "float8_row": ("float8", {"quantize": {"granularity": "row"}}),
    # issue 17's float8 GEMM levers, each one change on float8_only (compile + torchao float8, cuDNN SDPA: the best
    # H200 step, 100.8 ms): row-wise scales, and static activation scales (fluxperf.steps.float8_static)
    "float8_only_row": ("float8_only", {"quantize": {"granularity": "row"}}),
    "float8_static": ("float8_only", {"quantize": {"activation_scale": "static"}}),
    # ... and Inductor's GEMM autotuning (Triton templates against cuBLAS for each scaled-mm shape), still regional
    "float8_autotune": ("float8_only", {"compile": {"mode": "max-autotune-no-cudagraphs"}}),
    # ... and the whole transformer call replayed as one CUDA graph (fluxperf.steps.compile_graph: launch gaps)
    "float8_graph": ("float8_only", {"compile": {"cuda_graph": True}}),
    "full_cudnn": ("flags", {"attention": {"backend": "cudnn"}}),
    "cache_dit": ("flags", {"cache_dit": {"enabled": True}}),
    "cache_dit_f8b0": ("flags", {"cache_dit": {"enabled": True, "Fn": 8, "Bn": 0}}),
    "cache_dit_f1b0": ("flags", {"cache_dit": {"enabled": True, "Fn": 1, "Bn": 0}}),
    # diffusers' first-block cache decides inside the head block (a torch.compiler.disable'd hook): the blocks
    # compile regionally but not fullgraph (measured by the caching work; cache-dit compiles fullgraph).
    "fbcache": ("flags", {"first_block_cache": {"enabled": True}, "compile": {"fullgraph": False}}),
    # -- the FLUX.1-dev A100/H100 experiment table (1024x1024, 28 steps; issue 15): eager pipelines, one change
    # each on top of bf16, then the table's combined configurations
    "fp16": ("bf16", {"dtype": "float16"}),  # the table's baseline: the whole pipeline in float16
    "fa2": ("bf16", {"attention": {"backend": "flash"}}),  # SDPA restricted to its flash (FlashAttention-2) kernel
    # torchao int8 dynamic activation (per token) + int8 weight (per channel): torchao's PerRow default
    "int8": ("bf16", {"quantize": {"kind": "int8", "granularity": "row"}}),
    # TeaCache with the published 0.4 threshold (~1.8x on FLUX.1-dev): fluxperf.steps.caching.teacache
    "teacache": ("bf16", {"first_block_cache": {"enabled": True, "kind": "teacache", "threshold": 0.4}}),
    "fa2_fbcache_float8": ("fa2", {"first_block_cache": {"enabled": True, "threshold": 0.3},
                                   "quantize": {"kind": "float8"}}),
    "fa2_fbcache_int8": ("fa2", {"first_block_cache": {"enabled": True, "threshold": 0.3},
                                 "quantize": {"kind": "int8", "granularity": "row"}}),
    "compile_int8": ("compile", {"quantize": {"kind": "int8", "granularity": "row"}}),
    # flux-fast's use_compile (utils/pipeline_utils.py): torch.compile(transformer, mode="max-autotune",
    # fullgraph=True) and the same for vae.decode, on its full stack (flags). Whole-model, fullgraph, VAE decoder
    # compiled: as flux-fast. One difference, on purpose: "max-autotune" also turns on CUDA graph trees
    # (triton.cudagraphs), which recipe_rules._rule_no_cudagraph_tree_modes refuses (measured on the H200: 21 %
    # image error whole-model, "output overwritten" regional); "max-autotune-no-cudagraphs" keeps every other
    # Inductor option of the mode (max_autotune, coordinate_descent_tuning). CUDA graphs are guarded by the export
    # rung (its CudaGraphRunner copies inputs and outputs).
    "compile_faithful": ("flags", {"compile": {"scope": "whole", "mode": "max-autotune-no-cudagraphs",
                                               "fullgraph": True, "vae": True}}),
    # -- context parallelism over 2 GPUs (issue 16; fluxperf.steps.parallel, one process per GPU through
    # fluxperf.parallel_launch): on the compile rung, so step[compile] / (2 x step[cp2_*]) is the scaling efficiency.
    # Ring merges partial attentions by their log-sum-exp: SDPA's cuDNN kernel returns it (diffusers' native does not).
    "cp2_ulysses": ("compile", {"parallel": {"enabled": True, "ulysses_degree": 2}}),
    "cp2_ulysses_eager": ("bf16", {"parallel": {"enabled": True, "ulysses_degree": 2}}),  # vs bf16; runs on gloo
    "cp2_ring": ("compile", {"parallel": {"enabled": True, "ring_degree": 2, "attention": "cudnn"}}),
    "cp2_ulysses_float8": ("float8_only", {"parallel": {"enabled": True, "ulysses_degree": 2}}),
}

# Context-parallel rungs: run by fluxperf.parallel_launch, one process per GPU (perf group `parallel`).
PARALLEL_RUNGS: tuple[str, ...] = ("cp2_ulysses", "cp2_ring", "cp2_ulysses_float8", "cp2_ulysses_eager")

# The experiment table's rungs (perf groups `experiment` / `experiment_dev`, GPU numerics).
EXPERIMENT_RUNGS: tuple[str, ...] = ("fp16", "fa2", "int8", "teacache", "fa2_fbcache_float8", "fa2_fbcache_int8")

# What runs on a CPU-only machine (fp8 attention, float8 and AOTI/CUDA graphs need a GPU).
CPU_RUNGS: tuple[str, ...] = ("baseline", "bf16", "compile", "fused_qkv", "channels_last")
# (int8 and fp16 run on a CPU too, and teacache on dev/Kontext: not in the default CPU ladder, which is schnell)


def rung_names() -> tuple[str, ...]:
    """All rung names: the ladder's spine first, then the extra rungs."""
    return LADDER + tuple(_EXTRA)


def rung(name: str) -> Recipe:
    """Return the Recipe of a named rung.

    Args:
        name: a ladder rung ("baseline" ... "export") or an extra rung (see rung_names()).
    """
    if name in LADDER:
        merged: dict[str, Any] = {}
        for step_name, changes in _STEPS:
            merged = _merge(merged, changes)
            if step_name == name:
                return Recipe.from_dict({**merged, "name": name})
    if name in _EXTRA:
        base, changes = _EXTRA[name]
        return Recipe.from_dict({**_merge(rung(base).to_dict(), changes), "name": name})
    raise RecipeError(f"unknown rung {name!r}. Fix: use one of {list(rung_names())}.")


def recipe_from(spec: str | dict[str, Any] | Recipe) -> Recipe:
    """Build a Recipe from a rung name, a dict (optionally with "base": <rung name>), or a Recipe.

    Example:
        >>> recipe_from({"base": "compile", "compile": {"mode": "max-autotune-no-cudagraphs"}}).compile.mode
        'max-autotune-no-cudagraphs'
    """
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, str):
        return rung(spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        base = spec.pop("base", None)
        merged = _merge(rung(base).to_dict(), spec) if base else spec
        return Recipe.from_dict(merged)
    raise RecipeError(f"cannot build a recipe from {type(spec).__name__} {spec!r}. Fix: pass a rung name or a dict.")


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
