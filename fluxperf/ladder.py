"""The ablation ladder: flux-fast's named rungs, each one step more than the last.

    baseline (fp32 eager) -> bf16 -> compile -> fused_qkv -> channels_last -> fa3_fp8 -> float8 -> flags -> export

Each rung is a `Recipe`; any rung can be built from its name or from a dict, and extra rungs (caching,
other attention backends) are registered next to the ladder without being part of its spine.

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
    "full_cudnn": ("flags", {"attention": {"backend": "cudnn"}}),
    "cache_dit": ("flags", {"cache_dit": {"enabled": True}}),
    "cache_dit_f8b0": ("flags", {"cache_dit": {"enabled": True, "Fn": 8, "Bn": 0}}),
    "cache_dit_f1b0": ("flags", {"cache_dit": {"enabled": True, "Fn": 1, "Bn": 0}}),
    # diffusers' first-block cache decides inside the head block (a torch.compiler.disable'd hook): the blocks
    # compile regionally but not fullgraph (measured by the caching work; cache-dit compiles fullgraph).
    "fbcache": ("flags", {"first_block_cache": {"enabled": True}, "compile": {"fullgraph": False}}),
}

# What runs on a CPU-only machine (fp8 attention, float8 and AOTI/CUDA graphs need a GPU).
CPU_RUNGS: tuple[str, ...] = ("baseline", "bf16", "compile", "fused_qkv", "channels_last")


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
