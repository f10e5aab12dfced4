"""Which code an exported package was traced from: versions of the traced packages and a hash of the sources.

An AOTInductor package freezes the Python it was traced through. A package built before an upgrade of
diffusers, torchao or fluxperf (or before a local edit of a traced class, e.g. another RoPE theta in
FluxPosEmbed) computes the OLD model; served from the cache it would be a silent wrong result (issue 13.3). So
the package key (fluxperf.steps.export.cache.make_key, `code_hash`) covers:
  - the versions of every package whose code is traced or generates the kernels: torch, triton, diffusers,
    torchao, fluxperf and the FA3 build;
  - a hash of the source files of the traced classes: every submodule's class, the attention processors'
    classes and the parameters' tensor subclasses (torchao) — from any package but torch, whose files its version
    covers, so a user's own module or processor class counts too —, each file's imports one level deep from its
    own package or TRACED_FAMILIES (e.g. diffusers' apply_rotary_emb, imported by transformer_flux.py from
    embeddings.py), and fluxperf's own traced code (TRACED_FLUXPERF: the attention processors/ops and the export
    wrapper modules). Covers editable installs and local patches, whose version does not change.
The hash reads a few dozen files (cached per file by size and mtime), a few milliseconds per key.

Example:
    >>> import torch
    >>> code = code_fingerprint(torch.nn.Linear(2, 2))
    >>> sorted(code["versions"])
    ['diffusers', 'fa3', 'fluxperf', 'torch', 'torchao', 'triton']
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import types
from pathlib import Path

TRACED_FAMILIES = ("diffusers", "fluxperf", "torchao", "peft")  # their imports are followed from any traced file
NOT_HASHED = ("torch", "builtins")  # covered by the torch version / not Python source
TRACED_FLUXPERF = ("fluxperf.steps.attention", "fluxperf.steps.export.call")  # fluxperf code that runs inside the graph
VERSIONED = ("torch", "triton", "diffusers", "torchao")

_FILE_HASHES: dict[tuple, str] = {}


def code_fingerprint(module) -> dict:
    """{"versions": {...}, "source": 16 hex digits, "files": number of files hashed} for one exported module.

    Args:
        module: the nn.Module whose forward is exported (the transformer or the VAE), with its processors set.
    """
    from fluxperf import __version__
    from fluxperf.env import dist_version, fa3_build

    versions = {name: dist_version(name) for name in VERSIONED}
    versions.update(fluxperf=__version__, fa3=fa3_build())
    files = traced_source_files(module)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{_short(path)}:{_file_hash(path)}\n".encode())
    return {"versions": versions, "source": digest.hexdigest()[:16], "files": len(files)}


def traced_source_files(module) -> list[str]:
    """Sorted source files of the code traced when exporting `module` (see the module docstring)."""
    classes = {type(m) for m in module.modules()}
    classes |= {type(p) for p in (getattr(module, "attn_processors", None) or {}).values()}
    classes |= {type(p.data) for p in module.parameters()}
    modules = {sys.modules.get(c.__module__) for c in classes if _top(c.__module__) not in NOT_HASHED}
    modules |= {sys.modules.get(name) for name in TRACED_FLUXPERF}
    files = {f for name in TRACED_FLUXPERF for f in _package_files(name)}
    for mod in filter(None, modules):
        files |= {f for f in (_file_of(mod), *(_file_of(dep) for dep in _imports(mod))) if f}
    return sorted(files)


def _imports(mod: types.ModuleType):
    """Modules of the functions, classes and modules that `mod` holds as globals, from its own package or from
    TRACED_FAMILIES."""
    families = {*TRACED_FAMILIES, _top(mod.__name__)} - set(NOT_HASHED)
    for value in vars(mod).values():
        if isinstance(value, types.ModuleType):
            name = value.__name__
        elif isinstance(value, (type, types.FunctionType)):
            name = getattr(value, "__module__", None) or ""
        else:
            continue
        if _top(name) in families and name in sys.modules:
            yield sys.modules[name]


def _package_files(name: str) -> list[str]:
    """Source files of module `name`, or of every module of package `name` (found, not imported)."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [str(f) for d in spec.submodule_search_locations for f in Path(d).glob("*.py")]
    return [spec.origin] if spec.origin else []


def _file_of(mod) -> str | None:
    path = getattr(mod, "__file__", None)
    if not path:
        try:
            path = inspect.getsourcefile(mod)
        except TypeError:
            return None
    return path if path and path.endswith(".py") and os.path.isfile(path) else None


def _file_hash(path: str) -> str:
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        with open(path, "rb") as f:
            _FILE_HASHES[key] = hashlib.sha256(f.read()).hexdigest()
    return _FILE_HASHES[key]


def _short(path: str) -> str:
    """Path from the package root (site-packages/diffusers/x.py -> diffusers/x.py): equal across installs."""
    parts = path.replace(os.sep, "/").split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in TRACED_FAMILIES:
            return "/".join(parts[i:])
    return parts[-1]


def _top(name: str) -> str:
    return name.split(".", 1)[0]
