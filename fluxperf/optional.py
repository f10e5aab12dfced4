"""Optional dependencies, probed once and never imported at `import fluxperf` time.

`probe(name)` answers "is it importable?" with `importlib.util.find_spec` (no import side effects);
`require(name)` imports the module or raises `UnavailableError` naming the package and how to install it.

Test-only switch (never set it in production): FLUXPERF_HIDE_PACKAGES=torchao,cache_dit (keys of PACKAGES) makes
fluxperf behave as if those packages were not installed: `find_module`/`probe`/`require` report them missing, and
`hide_modules()` (called by the root conftest.py at pytest start-up) sets `sys.modules[module] = None` so any
`import torchao` raises ModuleNotFoundError and `importlib.util.find_spec` answers None (diffusers included). It
simulates an environment installed with only `.[test]`, e.g.

    FLUXPERF_HIDE_PACKAGES=torchao python -m pytest -q tests/test_apply_cpu.py
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass

from fluxperf.errors import UnavailableError


@dataclass(frozen=True)
class OptionalPackage:
    """One optional dependency: the module names that provide it and how to install it."""

    name: str
    modules: tuple[str, ...]
    install: str


PACKAGES: dict[str, OptionalPackage] = {
    "torchao": OptionalPackage("torchao", ("torchao",), "pip install 'fluxperf[torchao]'  (torchao>=0.18)"),
    "cache_dit": OptionalPackage("cache-dit", ("cache_dit",), "pip install 'fluxperf[cache-dit]'  (cache-dit>=1.5)"),
    # FA3 is published under two module names; upstream/tokenspeed first because torch's FA3 impl needs it.
    "fa3": OptionalPackage(
        "FlashAttention-3",
        ("flash_attn_interface", "fa3_fwd_interface"),
        "pip install fa3-fwd  (module fa3_fwd_interface) or tokenspeed-fa3 / build flash-attention/hopper "
        "(module flash_attn_interface); needs an sm90 (Hopper) GPU",
    ),
    "aiter": OptionalPackage("aiter", ("aiter",), "install ROCm/aiter on an AMD Instinct (MI300+) machine"),
    "pynvml": OptionalPackage("nvidia-ml-py", ("pynvml",), "pip install nvidia-ml-py"),
}


HIDE_ENV = "FLUXPERF_HIDE_PACKAGES"


def hidden_packages() -> frozenset[str]:
    """Keys of PACKAGES that $FLUXPERF_HIDE_PACKAGES hides (comma-separated; empty when unset).

    Raises:
        KeyError: an unknown name in the variable (named, with the known keys).
    """
    names = frozenset(n.strip() for n in os.environ.get(HIDE_ENV, "").split(",") if n.strip())
    for n in names:
        _package(n)
    return names


def hide_modules() -> list[str]:
    """Make the modules of every hidden package unimportable in this process (`sys.modules[m] = None`).

    Returns:
        the module names hidden.
    Raises:
        RuntimeError: one of them was already imported (hiding it now would be a lie); hide before importing.
    """
    hidden = []
    for name in sorted(hidden_packages()):
        for module in _package(name).modules:
            if sys.modules.get(module) is not None:
                raise RuntimeError(f"{HIDE_ENV}: {module!r} was imported before it could be hidden. "
                                   "Fix: call fluxperf.optional.hide_modules() first (the root conftest.py does).")
            sys.modules[module] = None
            hidden.append(module)
    find_module.cache_clear()
    return hidden


@functools.cache
def find_module(name: str) -> str | None:
    """Return the first importable module name of optional package `name`, or None. Cached: probed once.

    A package hidden by $FLUXPERF_HIDE_PACKAGES (test-only) is reported missing.
    """
    pkg = _package(name)
    if name in hidden_packages():
        return None
    for module in pkg.modules:
        try:
            if importlib.util.find_spec(module) is not None:
                return module
        except (ImportError, ValueError):  # a broken parent package or a module without a spec
            continue
    return None


def probe(name: str) -> bool:
    """True if optional package `name` (a key of PACKAGES) looks importable. Does not import it."""
    return find_module(name) is not None


def require(name: str):
    """Import and return optional package `name`, or raise UnavailableError with the install hint.

    Example:
        >>> torchao = require("torchao")  # doctest: +SKIP
    """
    module = find_module(name)
    pkg = _package(name)
    if module is None:
        raise UnavailableError(pkg.name, f"none of the modules {pkg.modules} can be found", pkg.install)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnavailableError(pkg.name, f"module {module!r} is present but failed to import ({exc})", pkg.install) from exc


def install_hint(name: str) -> str:
    return _package(name).install


def _package(name: str) -> OptionalPackage:
    try:
        return PACKAGES[name]
    except KeyError:
        raise KeyError(f"unknown optional package {name!r}; known: {sorted(PACKAGES)}") from None
