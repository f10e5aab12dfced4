"""Hardware/software fingerprint and capability predicates.

Versions are read from package metadata (no imports of optional packages). GPU facts are read only when
asked for, so importing this module never initializes CUDA.

Example:
    >>> fp = fingerprint()
    >>> "torch" in fp["versions"]
    True
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import platform
import re
import subprocess

from .optional import find_module

# Distributions whose versions belong in every record; FA3 ships under several names.
_VERSIONED = ("torch", "diffusers", "transformers", "torchao", "cache-dit", "triton", "numpy")
_FA3_DISTS = ("fa3-fwd", "tokenspeed-fa3", "flash_attn_3", "flash-attn-3")


def dist_version(name: str) -> str | None:
    """Installed version of distribution `name`, or None."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def fa3_build() -> str | None:
    """e.g. 'fa3-fwd 0.0.3 (fa3_fwd_interface)', or None when no FA3 build is installed."""
    module = find_module("fa3")
    if module is None:
        return None
    for dist in _FA3_DISTS:
        version = dist_version(dist)
        if version:
            return f"{dist} {version} ({module})"
    return f"unknown distribution ({module})"


def versions() -> dict[str, str | None]:
    out = {name: dist_version(name) for name in _VERSIONED}
    out["fa3"] = fa3_build()
    out["python"] = platform.python_version()
    return out


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_info(device: int = 0) -> dict | None:
    """Name, compute capability, memory, driver and CUDA runtime of one GPU; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "driver": driver_version(),
        "cuda": torch.version.cuda,
        "slug": gpu_slug(props.name),
    }


def is_sm90(device: int = 0) -> bool:
    """True on Hopper (compute capability 9.x), which FA3 needs."""
    info = gpu_info(device)
    return bool(info and info["capability"].startswith("9."))


def gpu_slug(name: str | None) -> str:
    """Filesystem-safe hardware id: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'; None -> 'cpu'."""
    if not name:
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@functools.cache
def driver_version() -> str | None:
    """NVIDIA driver version from NVML (nvidia-ml-py) or nvidia-smi; None when neither answers."""
    version = _nvml_driver_version()
    if version:
        return version
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _nvml_driver_version() -> str | None:
    if not find_module("pynvml"):
        return None
    import pynvml

    try:
        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError:  # no driver / no GPU: the caller tries nvidia-smi next
        return None
    return version.decode() if isinstance(version, bytes) else version


# Where a checkout travels without .git (the lent GPU machines, CI artifacts), the commit comes from the
# environment: FLUXPERF_GIT_COMMIT (set it when copying the tree) or GitHub Actions' GITHUB_SHA.
COMMIT_ENV_VARS = ("FLUXPERF_GIT_COMMIT", "GITHUB_SHA")


def git_commit(cwd: str | None = None) -> str | None:
    """The checkout's commit: `git rev-parse HEAD`, else $FLUXPERF_GIT_COMMIT / $GITHUB_SHA, else None."""
    from_git = _git_head(cwd)
    if from_git:
        return from_git
    return next((os.environ[v].strip() for v in COMMIT_ENV_VARS if os.environ.get(v, "").strip()), None)


def _git_head(cwd: str | None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def fingerprint(with_gpu: bool = False) -> dict:
    """Everything a record needs to say where it came from.

    Args:
        with_gpu: include GPU facts (initializes CUDA if available).
    """
    fp = {"versions": versions(), "platform": platform.platform(), "host": platform.node(),
          "git_commit": git_commit()}
    if with_gpu:
        fp["gpu"] = gpu_info()
    return fp
