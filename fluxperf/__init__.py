"""fluxperf: the flux-fast optimization stack for diffusers FLUX.1 pipelines, as composable, checked steps.

Importing fluxperf is cheap: it imports no torch, diffusers, torchao, cache-dit or FA3 module and never
touches CUDA. Public names resolve lazily on first use.

Example:
    >>> import fluxperf
    >>> fluxperf.rung("compile").compile.enabled
    True
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Recipe": "fluxperf.recipe",
    "AttentionBackendName": "fluxperf.recipe",
    "rung": "fluxperf.ladder",
    "recipe_from": "fluxperf.ladder",
    "LADDER": "fluxperf.ladder",
    "apply": "fluxperf.apply",
    "plan": "fluxperf.apply",
    "remove": "fluxperf.apply",
    "applied": "fluxperf.apply",
    "AppliedStack": "fluxperf.apply",
    "build_pipeline": "fluxperf.model.build",
    "ShapeSpec": "fluxperf.model.shapes",
    "psnr": "fluxperf.measure.metrics",
    "fingerprint": "fluxperf.env",
    "FluxperfError": "fluxperf.errors",
    "RecipeError": "fluxperf.errors",
    "UnavailableError": "fluxperf.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'fluxperf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
