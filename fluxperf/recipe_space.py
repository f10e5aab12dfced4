"""The recipe space: every combination a user can write of the options that interact, for exhaustive checks.

Each axis is a tuple of (label, partial recipe dict); a combination merges one value of every axis. Options that
no cross-step rule or stage reads together (channels_last, cache thresholds, export.vae, ...) are left at their
defaults: the space covers what can conflict, not every field value (those are checked per field, see
fluxperf.recipe_checks).

    AXES = dtype x compiler (eager, compile scope x mode x fullgraph, export, export+compile) x fuse_qkv
           x attention (backend x fp8 scaling) x quantize (off, float8 tensor/row, int8 row) x inductor_flags
           x cache (none, cache-dit, FBC, TeaCache, both)

Example:
    >>> sum(1 for _ in combinations())
    44160
    >>> labels, data = next(combinations())
    >>> Recipe.from_dict(data).name
    'float32|compiler=eager|qkv=unfused|attn=sdpa|quant=none|flags=off|cache=none'
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from fluxperf.errors import RecipeError
from fluxperf.ladder import _merge
from fluxperf.recipe import COMPILE_MODES, DTYPES, FP8_BACKENDS, AttentionBackendName, Recipe

Axis = tuple[tuple[str, dict[str, Any]], ...]


def _compiler_axis() -> Axis:
    """eager, torch.compile (scope x mode x fullgraph), export, and export with compile (refused: they exclude)."""
    values = [("eager", {})]
    for scope, mode, fullgraph in itertools.product(("regional", "whole"), COMPILE_MODES, (True, False)):
        label = f"compile/{scope}/{mode or 'none'}/{'fullgraph' if fullgraph else 'breaks'}"
        values.append((label, {"compile": {"enabled": True, "scope": scope, "mode": mode, "fullgraph": fullgraph}}))
    values += [("export", {"export": {"enabled": True}}),
               ("export+compile", {"export": {"enabled": True}, "compile": {"enabled": True}})]
    return tuple(values)


def _attention_axis() -> Axis:
    values = [(b, {"attention": {"backend": b}}) for b in AttentionBackendName.values()]
    values += [(f"{b}/per_head", {"attention": {"backend": b, "fp8_scaling": "per_head"}}) for b in FP8_BACKENDS]
    return tuple(values)


# Cache parameters that fit every FLUX model, the tiny one (3 blocks) included: F1B0.
CACHE_DIT = {"enabled": True, "Fn": 1, "Bn": 0}

AXES: dict[str, Axis] = {
    "dtype": tuple((d, {"dtype": d}) for d in DTYPES),
    "compiler": _compiler_axis(),
    "qkv": (("unfused", {}), ("fused", {"fuse_qkv": True})),
    "attn": _attention_axis(),
    "quant": (("none", {}), ("float8/tensor", {"quantize": {"kind": "float8", "granularity": "tensor"}}),
              ("float8/row", {"quantize": {"kind": "float8", "granularity": "row"}}),
              ("int8/row", {"quantize": {"kind": "int8", "granularity": "row"}})),
    "flags": (("off", {}), ("on", {"inductor_flags": {"enabled": True}})),
    "cache": (("none", {}), ("cache_dit", {"cache_dit": CACHE_DIT}),
              ("fbc", {"first_block_cache": {"enabled": True}}),
              ("teacache", {"first_block_cache": {"enabled": True, "kind": "teacache"}}),
              ("both", {"cache_dit": CACHE_DIT, "first_block_cache": {"enabled": True}})),
}


def combinations(axes: dict[str, Axis] | None = None) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """Yield (labels {axis: value label}, recipe dict) for every combination of `axes` (default AXES).

    The recipe dict's "name" is the labels joined with "|", so a refusal or a failure names its combination.
    """
    axes = AXES if axes is None else axes
    names = list(axes)
    for values in itertools.product(*(axes[n] for n in names)):
        data: dict[str, Any] = {}
        for _, patch in values:
            data = _merge(data, patch)
        labels = {n: label for n, (label, _) in zip(names, values)}
        data["name"] = "|".join(_tag(n, label) for n, label in labels.items())
        yield labels, data


def judge(data: dict[str, Any]) -> Recipe | RecipeError:
    """The Recipe if `Recipe.validate` accepts `data`, else the RecipeError it raised (never another exception)."""
    try:
        return Recipe.from_dict(data)
    except RecipeError as exc:
        return exc


def _tag(axis: str, label: str) -> str:
    return label if axis == "dtype" else f"{axis}={label}"
