"""Attention backend registry: what each backend needs, checked before anything is installed.

Each backend (names: fluxperf.recipe.AttentionBackendName) has a spec: the torch op it calls (if any), the optional
package it needs, an install hint and a list of constraint checks. A check takes a `Target` (device type, dtype,
head_dim, sequence length, compute capability) and returns a reason string, or None when it is satisfied.
Package availability and the CUDA capability are probed once (cached). No torch import at module import.

Example:
    >>> t = Target(device_type="cpu", dtype="bfloat16", head_dim=128)
    >>> check("sdpa", t) is None
    True
    >>> check("fa3_fp8", t)
    "device 'cpu': fa3_fp8 runs on CUDA GPUs only"
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from fluxperf.errors import UnavailableError
from fluxperf.optional import install_hint
from fluxperf.recipe import AttentionBackendName

HALF_DTYPES = ("bfloat16", "float16")
FA3_CAPABILITY = (9, 0)  # FA3 is Hopper-only (sm90); torch's FA3 impl checks major == 9 too
SDPA_GPU_MIN_CAPABILITY = (8, 0)  # cuDNN attention and SDPA's flash kernel: Ampere or newer
AITER_ARCHS = ("gfx942", "gfx950")  # MI300 / MI350, the archs aiter's fp8 MHA kernels are built for


@dataclass(frozen=True)
class Target:
    """What an attention backend would run on.

    Args:
        device_type: "cuda", "cpu", ...
        dtype: dtype name of q/k/v ("bfloat16", ...).
        head_dim: per-head size.
        seq_len: joint sequence length, None if not known yet.
        capability: CUDA compute capability (major, minor), None off CUDA.
        hip: True on a ROCm build (AMD GPU behind the "cuda" device type).
        arch: GPU arch name on ROCm (e.g. "gfx942"), None elsewhere.
    """

    device_type: str
    dtype: str
    head_dim: int
    seq_len: int | None = None
    capability: tuple[int, int] | None = None
    hip: bool = False
    arch: str | None = None


Check = Callable[[str, Target], "str | None"]


@dataclass(frozen=True)
class BackendSpec:
    """One backend: the op it calls (None for SDPA variants), the optional package key, checks and install hint."""

    name: str
    op: str | None
    package: str | None
    hint: str
    checks: tuple[Check, ...]


# -- checks: (backend name, target) -> reason or None ---------------------------------------------------------
def _positive_shape(name: str, t: Target) -> str | None:
    if not isinstance(t.head_dim, int) or t.head_dim < 1:
        return f"head_dim={t.head_dim!r}: must be a positive integer"
    if t.seq_len is not None and (not isinstance(t.seq_len, int) or t.seq_len < 1):
        return f"seq_len={t.seq_len!r}: must be a positive integer"
    return None


def _nvidia_cuda(name: str, t: Target) -> str | None:
    if t.device_type != "cuda":
        return f"device {t.device_type!r}: {name} runs on CUDA GPUs only"
    if t.hip:
        return f"{name} needs an NVIDIA GPU, this is a ROCm (AMD) build"
    if t.capability is None:
        return f"no CUDA device is visible, {name} needs one"
    return None


def _half_dtype(name: str, t: Target) -> str | None:
    if t.dtype not in HALF_DTYPES:
        return f"dtype {t.dtype}: {name} takes {' or '.join(HALF_DTYPES)} inputs (set the recipe's dtype to bfloat16)"
    return None


def _head_dim_le_256(name: str, t: Target) -> str | None:
    if t.head_dim % 8 or t.head_dim > 256:
        return f"head_dim={t.head_dim}: {name} needs a multiple of 8 and at most 256"
    return None


def _sm80_plus(name: str, t: Target) -> str | None:
    if t.capability is not None and t.capability < SDPA_GPU_MIN_CAPABILITY:
        return f"compute capability {t.capability}: {name} needs sm80 or newer"
    return None


def _sm90(name: str, t: Target) -> str | None:
    if t.capability is not None and t.capability[0] != FA3_CAPABILITY[0]:
        return f"compute capability sm{t.capability[0]}{t.capability[1]}: FlashAttention-3 runs on sm90 (Hopper) only"
    return None


def _rocm_arch(name: str, t: Target) -> str | None:
    if t.device_type != "cuda" or not t.hip:
        return f"device {t.device_type!r}{'' if t.hip else ' (not ROCm)'}: {name} runs on AMD Instinct GPUs only"
    if t.arch is not None and not t.arch.startswith(AITER_ARCHS):
        return f"GPU arch {t.arch}: aiter's fp8 attention is built for {'/'.join(AITER_ARCHS)}"
    return None


_GPU_SDPA_HINT = "run on a CUDA GPU (sm80+) in bfloat16/float16, or use attention.backend='sdpa'"

SPECS: dict[str, BackendSpec] = {
    s.name: s
    for s in (
        BackendSpec(AttentionBackendName.SDPA.value, None, None, "none needed", (_positive_shape,)),
        BackendSpec(AttentionBackendName.CUDNN.value, None, None, _GPU_SDPA_HINT,
                    (_positive_shape, _nvidia_cuda, _sm80_plus, _half_dtype, _head_dim_le_256)),
        BackendSpec(AttentionBackendName.FLASH.value, None, None, _GPU_SDPA_HINT,
                    (_positive_shape, _nvidia_cuda, _sm80_plus, _half_dtype, _head_dim_le_256)),
        BackendSpec(AttentionBackendName.FA3.value, "fluxperf::fa3", "fa3", install_hint("fa3"),
                    (_positive_shape, _nvidia_cuda, _sm90, _half_dtype, _head_dim_le_256)),
        BackendSpec(AttentionBackendName.FA3_FP8.value, "fluxperf::fa3_fp8", "fa3", install_hint("fa3"),
                    (_positive_shape, _nvidia_cuda, _sm90, _half_dtype, _head_dim_le_256)),
        BackendSpec(AttentionBackendName.AITER_FP8.value, "fluxperf::aiter_fp8", "aiter", install_hint("aiter"),
                    (_positive_shape, _rocm_arch, _half_dtype, _head_dim_le_256)),
    )
}
assert set(SPECS) == set(AttentionBackendName.values()), "every AttentionBackendName needs a BackendSpec"


def spec(name: str) -> BackendSpec:
    """The spec of backend `name`; ValueError naming the known backends otherwise."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"attention backend {name!r} is not known. Fix: use one of {sorted(SPECS)}.") from None


@functools.cache
def package_reason(package: str) -> str | None:
    """None if optional package `package` imports, else why not. Imported once per process (cached)."""
    import importlib

    from fluxperf.optional import PACKAGES, find_module

    module = find_module(package)
    if module is None:
        pkg = PACKAGES[package]
        return f"{pkg.name} is not installed (none of the modules {list(pkg.modules)} can be found)"
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken build (wrong torch ABI, missing .so) must surface as a reason
        return f"module {module!r} is installed but failed to import: {type(exc).__name__}: {exc}"
    return None


def check(name: str, target: Target) -> str | None:
    """First unmet constraint of backend `name` on `target` (a reason string), or None if it can run there.

    The package is imported only after the device checks pass (no FA3 import on a CPU machine).
    """
    s = spec(name)
    for constraint in s.checks:
        reason = constraint(name, target)
        if reason is not None:
            return reason
    return package_reason(s.package) if s.package else None


def unavailable(name: str, reason: str) -> UnavailableError:
    """The error for backend `name` that cannot run: names the backend, the reason and the install hint."""
    return UnavailableError(f"attention backend {name!r}", reason,
                            f"{spec(name).hint}; or set attention.fallback='sdpa' to fall back (recorded)")


# -- targets ------------------------------------------------------------------------------------------------
@functools.cache
def _gpu_facts(index: int) -> tuple[tuple[int, int] | None, bool, str | None]:
    """(capability, hip, arch) of CUDA device `index`; (None, hip, None) without one. Probed once per index."""
    import torch

    hip = torch.version.hip is not None
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None, hip, None
    props = torch.cuda.get_device_properties(index)
    arch = getattr(props, "gcnArchName", None) if hip else None
    return (props.major, props.minor), hip, arch


def target_for(device, dtype, head_dim: int, seq_len: int | None = None) -> Target:
    """A Target from a torch device (or string) and dtype (or name), probing the GPU if it is CUDA.

    Example:
        >>> target_for("cpu", "bfloat16", 128).device_type
        'cpu'
    """
    import torch

    device = torch.device(device)
    dtype_name = str(dtype).removeprefix("torch.")
    capability, hip, arch = (None, False, None)
    if device.type == "cuda":
        capability, hip, arch = _gpu_facts(device.index if device.index is not None else 0)
    return Target(device.type, dtype_name, int(head_dim), seq_len, capability, hip, arch)


def default_target(head_dim: int = 128, seq_len: int | None = None, dtype="bfloat16") -> Target:
    """The target on this machine: the first CUDA device if there is one, else the CPU."""
    import torch

    return target_for("cuda" if torch.cuda.is_available() else "cpu", dtype, head_dim, seq_len)


def available_backends(target: Target | None = None) -> dict[str, str | None]:
    """Every backend name -> None if usable on `target` (default: this machine, bf16, head_dim 128), else why not.

    Example:
        >>> available_backends(Target("cpu", "bfloat16", 128))["sdpa"] is None
        True
    """
    target = target or default_target()
    return {name: check(name, target) for name in SPECS}
