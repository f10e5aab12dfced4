"""Where AOTInductor packages live, how they are keyed, and when a stored one is refused.

Layout (one directory per package, a `package.pt2` and a `manifest.json` written atomically next to it):

    <cache_dir>/<component>/<variant>-<H>x<W>-b<B>-t<T>-<dtype>/torch-<version>/<gpu-slug>/<recipe hash>-<config hash>/

The key is (component, variant, shape key, dtype, torch version, GPU name) plus a hash of the recipe parts
that change the exported graph (fuse_qkv, channels_last, attention, quantize, the inductor configs), a hash
of the model (class, config, attention processors, parameter kinds, the plain attributes of every submodule
such as FluxPosEmbed.theta) and a hash of the traced CODE (fluxperf.steps.export.code: versions of torch, triton,
diffusers, torchao, fluxperf and the FA3 build, and the source of the traced classes). All of them are in the
directory name, so a change of any is a cache miss (a rebuild), never a hit on a stale package. Weights are NOT
in the key: packages are built without their constants and the live module's weights are loaded into them
(fluxperf.steps.export.apply).

A package whose manifest disagrees with the current torch version or GPU (e.g. a cache directory copied from
another machine) is refused with `PackageMismatchError`, naming both values and the fix.

Example:
    >>> from fluxperf.model.shapes import ShapeSpec
    >>> k = make_key("transformer", ShapeSpec("schnell", 512, 512), "bfloat16", {"fuse_qkv": False},
    ...              {"class": "FluxTransformer2DModel"}, code={"versions": {"diffusers": "0.42.1"}},
    ...              torch_version="2.11.0", gpu_name="NVIDIA H100 80GB HBM3")
    >>> str(k.relpath()).split("/")[:4]
    ['transformer', 'schnell-512x512-b1-t256-bfloat16', 'torch-2.11.0', 'nvidia-h100-80gb-hbm3']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fluxperf.errors import FluxperfError
from fluxperf.io import atomic_write_json

FORMAT = "fluxperf-aoti-1"  # bump when the exported wrapper modules or the calling convention change
PACKAGE_FILE = "package.pt2"
MANIFEST_FILE = "manifest.json"
COMPONENTS = ("transformer", "vae_decoder")


class PackageMismatchError(FluxperfError, RuntimeError):
    """A stored package was built for another torch version, GPU or key than the one asked for."""


# -- key -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackageKey:
    """Everything that decides whether a stored package may be reused."""

    component: str
    variant: str
    shape_key: str
    dtype: str
    torch_version: str
    gpu_name: str
    recipe_hash: str
    config_hash: str
    code_hash: str

    def relpath(self) -> Path:
        """Directory of the package, relative to the cache directory."""
        return (Path(self.component) / f"{self.shape_key}-{self.dtype}" / f"torch-{_slug(self.torch_version)}"
                / _slug(self.gpu_name) / f"{self.recipe_hash}-{self.config_hash}-{self.code_hash}")

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def make_key(component: str, spec, dtype: str, recipe_parts: dict, model_fingerprint: dict, *, code: dict,
             torch_version: str | None = None, gpu_name: str | None = None) -> PackageKey:
    """Build the PackageKey of one component.

    Args:
        component: "transformer" or "vae_decoder".
        spec: the fluxperf.model.shapes.ShapeSpec the package is built for.
        dtype: dtype name of the module ("bfloat16", ...).
        recipe_parts: graph-changing recipe parts (see recipe_graph_parts).
        model_fingerprint: module fingerprint (see module_fingerprint).
        code: traced-code fingerprint (fluxperf.steps.export.code.code_fingerprint: versions and source hash);
            required, so no caller can forget it and get hits on packages built from other code.
        torch_version, gpu_name: default: this process's torch and CUDA device 0.
    """
    if component not in COMPONENTS:
        raise FluxperfError(f"component={component!r} is not an exportable component. Fix: use one of {list(COMPONENTS)}.")
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    if gpu_name is None:
        gpu_name = current_gpu_name()
    return PackageKey(component, spec.variant, spec.key(), str(dtype).replace("torch.", ""), str(torch_version),
                      str(gpu_name), stable_hash({"format": FORMAT, **recipe_parts}), stable_hash(model_fingerprint),
                      stable_hash(code))


def recipe_graph_parts(recipe, inductor_configs: dict) -> dict:
    """The recipe parts that change the exported graph or the generated code."""
    return {
        "dtype": recipe.dtype,
        "fuse_qkv": recipe.fuse_qkv,
        "channels_last": recipe.channels_last,
        "attention": asdict(recipe.attention),
        "quantize": asdict(recipe.quantize),
        "inductor_configs": dict(sorted(inductor_configs.items())),
    }


def module_fingerprint(module) -> dict:
    """Model identity without weights: class, config, attention processors, parameter names/shapes/kinds."""
    config = getattr(module, "config", None)
    processors = getattr(module, "attn_processors", None) or {}
    kinds = set()
    for p in module.parameters():
        data = p.data
        plain = type(data).__name__ == "Tensor"  # tensor subclasses (torchao Float8Tensor) may not answer layouts
        channels_last = plain and data.ndim == 4 and not data.is_contiguous() and \
            data.is_contiguous(memory_format=_channels_last())
        kinds.add(f"{type(data).__name__}:{p.dtype}:{'channels_last' if channels_last else 'default'}")
    return {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        # private entries are bookkeeping, not architecture; diffusers' `_use_default_values` is a list in set
        # order, which differs between processes and made every new process miss the VAE package
        "config": _jsonable({k: v for k, v in dict(config).items() if not str(k).startswith("_")}
                            if config is not None else {}),
        "attn_processors": sorted({type(p).__name__ for p in processors.values()}),
        "param_kinds": sorted(kinds),
        # names and shapes: fused vs unfused QKV, LoRA layers, pruned blocks all change the graph
        "params": stable_hash([(n, list(p.shape)) for n, p in module.named_parameters()]),
        # values the traced code reads from the modules, not from the config (FluxPosEmbed.theta, eps, heads,...)
        "attributes": stable_hash([(n, type(m).__name__, _plain_attributes(m)) for n, m in module.named_modules()]
                                  + [(n, type(p).__name__, _plain_attributes(p)) for n, p in sorted(processors.items())]),
        # forward (pre-)hooks change what is traced (e.g. the perf tier's injected slowdown) without changing any
        # of the above: a package exported without them must not be reused with them, nor the reverse
        "hooks": stable_hash(_hooks(module)),
    }


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")


def _hooks(module) -> list:
    """(submodule, hook kind, hook identity) of every forward (pre-)hook: the function's qualified name, a hash of
    its bytecode and its closure (plain values as they are, tensors as shape and dtype)."""
    out = []
    for name, sub in module.named_modules():
        for kind in _HOOK_DICTS:
            for fn in getattr(sub, kind, {}).values():
                out.append((name, kind, _callable_identity(fn)))
    return out


def _callable_identity(fn, depth: int = 3) -> list:
    code = getattr(fn, "__code__", None)
    cells = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _is_plain(value):
            cells.append(value)
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            cells.append([list(value.shape), str(value.dtype)])
        elif depth > 0 and hasattr(value, "__code__"):  # a helper the hook calls, with its own captured values
            cells.append(_callable_identity(value, depth - 1))
        else:
            cells.append(type(value).__qualname__)
    return [f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}",
            hashlib.sha256(code.co_code).hexdigest()[:16] if code is not None else None, cells]


def _plain_attributes(obj) -> dict:
    """Public attributes of `obj` with plain values (numbers, strings, bools, None and tuples/lists of them)."""
    out = {}
    for name, value in vars(obj).items():
        if name.startswith("_") or name == "training":
            continue
        if _is_plain(value):
            out[name] = value
    return out


def _is_plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def weights_fingerprint(module, samples: int = 64) -> str:
    """16 hex digits identifying the weight VALUES of `module` (for packages built with their weights inside).

    Hashes every parameter's and buffer's name, shape, dtype and `samples` evenly strided values, so another seed,
    checkpoint or a fine-tune changes it, at the cost of one small device-to-host copy per tensor.
    """
    import torch
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    from fluxperf.steps.export.weights import flat_constants

    digest = hashlib.sha256()
    # a tensor-subclass weight (torchao float8/int8) is hashed through its plain inner tensors (qdata, scale):
    # the subclass itself cannot be flattened to 1-D
    named = [(n, t) for n, t in flat_constants(module).items() if not is_traceable_wrapper_subclass(t)]
    with torch.no_grad():
        for name, tensor in sorted(named, key=lambda kv: kv[0]):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            values = flat[::step][:samples].float().cpu().numpy().tobytes()
            digest.update(f"{name}:{list(tensor.shape)}:{tensor.dtype}:".encode() + values)
    return digest.hexdigest()[:16]


def stable_hash(obj: Any) -> str:
    """16 hex digits of sha256 over canonical JSON (sorted keys)."""
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def current_gpu_name(device: int = 0) -> str:
    import torch

    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cpu"


def default_cache_dir() -> Path:
    """$FLUXPERF_CACHE if set, else ~/.cache/fluxperf/aoti."""
    env = os.environ.get("FLUXPERF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fluxperf" / "aoti"


# -- manifests -------------------------------------------------------------------------------------------
def package_dir(cache_dir: str | os.PathLike, key: PackageKey) -> Path:
    return Path(cache_dir) / key.relpath()


def write_manifest(directory: str | os.PathLike, key: PackageKey, **extra: Any) -> Path:
    """Write manifest.json (atomically: temp file + os.replace) describing the package in `directory`."""
    manifest = {"format": FORMAT, **key.as_dict(), "package_file": PACKAGE_FILE, "written_at": time.time(), **extra}
    return atomic_write_json(Path(directory) / MANIFEST_FILE, _jsonable(manifest))


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest in `directory`, or None when there is none (an incomplete or absent package)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PackageMismatchError(f"manifest {path} is not valid JSON ({exc}). Fix: delete {path.parent} and rebuild.") from exc


def check_manifest(manifest: dict, key: PackageKey, directory: str | os.PathLike) -> None:
    """Refuse a package whose manifest was written for another torch, GPU or key.

    Raises:
        PackageMismatchError: naming the field, the stored and the current value, and the fix.
    """
    fix = (f"Fix: delete {directory} (or use another cache_dir) and rebuild: AOTInductor packages hold compiled "
           "kernels for exactly one torch build and GPU.")
    for field, what in (("torch_version", "torch version"), ("gpu_name", "GPU")):
        stored, current = manifest.get(field), getattr(key, field)
        if stored != current:
            raise PackageMismatchError(
                f"refusing AOTInductor package in {directory}: it was built with {what} {stored!r}, but this process "
                f"has {what} {current!r}. {fix}")
    if manifest.get("format") != FORMAT:
        raise PackageMismatchError(f"refusing package in {directory}: format {manifest.get('format')!r}, this fluxperf "
                                   f"writes {FORMAT!r}. {fix}")
    for field, stored in key.as_dict().items():
        if manifest.get(field) != stored:
            raise PackageMismatchError(
                f"refusing package in {directory}: manifest {field}={manifest.get(field)!r} but the key asks for "
                f"{stored!r}. {fix}")


def lookup(cache_dir: str | os.PathLike, key: PackageKey) -> Path | None:
    """Path of a stored, checked package for `key`, or None (miss). Raises PackageMismatchError for a foreign one."""
    directory = package_dir(cache_dir, key)
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    check_manifest(manifest, key, directory)
    package = directory / manifest.get("package_file", PACKAGE_FILE)
    if not package.is_file():
        raise PackageMismatchError(f"manifest in {directory} names {package.name}, which is missing. "
                                   f"Fix: delete {directory} and rebuild.")
    return package


def get_or_build(cache_dir: str | os.PathLike, key: PackageKey, build: Callable[[str], Any],
                 **manifest_extra: Any) -> tuple[Path, str, float]:
    """Return (package path, "hit" or "miss", build seconds); on a miss call `build(tmp_path)` then publish.

    `build` writes the package to the temp path it is given (a `.pt2` in the package directory); it is moved into
    place with os.replace and the manifest is written last, so a crash never leaves a half package that looks
    complete.
    """
    found = lookup(cache_dir, key)
    if found is not None:
        return found, "hit", 0.0
    directory = package_dir(cache_dir, key)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".building-", suffix=".pt2", dir=directory)
    os.close(fd)
    start = time.perf_counter()
    try:
        build(tmp)
        build_s = time.perf_counter() - start
        os.replace(tmp, directory / PACKAGE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_manifest(directory, key, build_s=round(build_s, 3), **manifest_extra)
    return directory / PACKAGE_FILE, "miss", build_s


# -- helpers ---------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.+]+", "-", str(text).lower()).strip("-") or "none"


def _channels_last():
    import torch

    return torch.channels_last


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
