"""Hardware/software fingerprint and capability predicates.

Versions are read from package metadata (no imports of optional packages). GPU facts are read only when
asked for, so importing this module never initializes CUDA.

Example:
    >>> fp = fingerprint()
    >>> "torch" in fp["versions"]
    True
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata as md
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass

from fluxperf.optional import find_module

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


GPU_NAME_ENV = "FLUXPERF_GPU_NAME"  # documented override of the GPU name (e.g. a renamed card, CPU tests)
GPU_CAPABILITY_ENV = "FLUXPERF_GPU_CAPABILITY"  # with the override: its compute capability, e.g. "9.0"
# GPUs one measurement spans (context parallelism, issue 16): >1 keys the baseline as '<slug>x<N>'. Set by
# scripts/tiers/perf-tier.sh for the `parallel` group; numerics thresholds stay per GPU model (gpu_slug).
GPU_COUNT_ENV = "FLUXPERF_GPU_COUNT"


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU this process measures: the CUDA device in use, matched to its NVML device by UUID.

    `CUDA_VISIBLE_DEVICES=1` makes CUDA device 0 the machine's second GPU; NVML numbers GPUs by PCI order and
    ignores the variable, so NVML index 0 may be another card. The UUID is the same in both APIs.

    Attributes:
        name: e.g. "NVIDIA H200". slug: "nvidia-h200". family: "sm90" (from the compute capability).
        uuid: "GPU-8f1c..." (NVML spelling) or None. cuda_index: torch device index. nvml_index: NVML index.
        source: where the identity came from: "torch", "nvml" (no CUDA in torch), or FLUXPERF_GPU_NAME.
    """

    name: str
    uuid: str | None = None
    capability: str | None = None
    cuda_index: int | None = None
    nvml_index: int | None = None
    source: str = "torch"

    count: int = 1  # GPUs of this model one measurement spans ($FLUXPERF_GPU_COUNT; 1: one GPU)

    @property
    def slug(self) -> str:
        """'nvidia-h200', or 'nvidia-h200x2' for a measurement over 2 of them (baselines/<slug>/)."""
        return gpu_slug(self.name) + (f"x{self.count}" if self.count > 1 else "")

    @property
    def family(self) -> str | None:
        return capability_family(self.capability)

    def to_dict(self) -> dict:
        return {**asdict(self), "slug": self.slug, "family": self.family}


def capability_family(capability: str | None) -> str | None:
    """'9.0' -> 'sm90' (the architecture family whose numerics a GPU shares); None when unknown."""
    if not capability or not re.fullmatch(r"\d+\.\d+", str(capability)):
        return None
    major, minor = str(capability).split(".")
    return f"sm{major}{minor}"


def gpu_identity(device: int | None = None) -> GpuIdentity | None:
    """The identity of CUDA device `device` (default: the current one); None on a machine without a GPU.

    Order: $FLUXPERF_GPU_NAME (override; capability from $FLUXPERF_GPU_CAPABILITY), torch's device properties
    (honours CUDA_VISIBLE_DEVICES; NVML index found by UUID when nvidia-ml-py is installed), else NVML alone,
    mapping the CUDA_VISIBLE_DEVICES entry (a UUID, or an index read in PCI bus order) to its NVML device.
    Initializes CUDA when torch sees a GPU.
    """
    identity = _identity(device)
    count = gpu_count()
    return dataclasses.replace(identity, count=count) if identity is not None and count > 1 else identity


def gpu_count() -> int:
    """$FLUXPERF_GPU_COUNT (GPUs one measurement spans), 1 when unset.

    Raises:
        ValueError: not an integer from 1 to 8.
    """
    raw = os.environ.get(GPU_COUNT_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= 8:
        raise ValueError(f"{GPU_COUNT_ENV}={raw!r}: the GPUs one measurement spans, an integer from 1 to 8. "
                         f"Fix: e.g. {GPU_COUNT_ENV}=2 for the parallel perf group on 2 GPUs, or unset it.")
    return int(raw)


def _identity(device: int | None) -> GpuIdentity | None:
    override = os.environ.get(GPU_NAME_ENV)
    if override:
        return GpuIdentity(override, capability=os.environ.get(GPU_CAPABILITY_ENV) or None, source=GPU_NAME_ENV)
    found = _torch_device(device)
    if found is not None:
        name, uuid, capability, index = found
        return GpuIdentity(name, uuid, capability, index, _nvml_index_of_uuid(uuid), "torch")
    return _nvml_identity(device or 0)


def nvml_handle(identity: GpuIdentity | None):
    """The NVML handle of `identity` (by UUID, else by its NVML index); None when NVML cannot answer."""
    nvml = _nvml()
    if nvml is None or identity is None:
        return None
    try:
        if identity.uuid:
            return nvml.nvmlDeviceGetHandleByUUID(identity.uuid)
        if identity.nvml_index is not None:
            return nvml.nvmlDeviceGetHandleByIndex(identity.nvml_index)
    except nvml.NVMLError:  # the device vanished or NVML refuses: the caller reports "NVML unavailable"
        return None
    return None


def _torch_device(device: int | None) -> tuple[str, str | None, str, int] | None:
    """(name, NVML-style UUID, capability, index) of a CUDA device from torch; None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if device is None else device
    props = torch.cuda.get_device_properties(index)
    raw = getattr(props, "uuid", None)
    uuid = None if raw is None else (str(raw) if str(raw).startswith(("GPU-", "MIG-")) else f"GPU-{raw}")
    return props.name, uuid, f"{props.major}.{props.minor}", index


def _nvml():
    """pynvml, initialized; None when nvidia-ml-py is missing or NVML has no driver."""
    if not find_module("pynvml"):
        return None
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver / no GPU: a CPU machine
        return None
    return pynvml


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_index_of_uuid(uuid: str | None) -> int | None:
    nvml = _nvml()
    if nvml is None or not uuid:
        return None
    try:
        return int(nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(uuid)))
    except nvml.NVMLError:
        return None


def _nvml_identity(device: int) -> GpuIdentity | None:
    nvml = _nvml()
    if nvml is None:
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ and not visible:
        return None  # CUDA_VISIBLE_DEVICES="" hides every GPU
    entry = visible[device] if device < len(visible) else str(device)
    try:
        handle = (nvml.nvmlDeviceGetHandleByUUID(entry) if entry.startswith(("GPU-", "MIG-"))
                  else nvml.nvmlDeviceGetHandleByIndex(int(entry)))
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        return GpuIdentity(_decode(nvml.nvmlDeviceGetName(handle)), _decode(nvml.nvmlDeviceGetUUID(handle)),
                           f"{major}.{minor}", device, int(nvml.nvmlDeviceGetIndex(handle)), "nvml")
    except (nvml.NVMLError, ValueError):
        return None


def gpu_info(device: int | None = None) -> dict | None:
    """Name, UUID, compute capability, memory, driver and CUDA runtime of one GPU; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    identity = gpu_identity(device)
    props = torch.cuda.get_device_properties(identity.cuda_index if identity.cuda_index is not None else 0)
    return {
        "name": identity.name,
        "uuid": identity.uuid,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "driver": driver_version(),
        "cuda": torch.version.cuda,
        "slug": identity.slug,
    }


def is_sm90(device: int | None = None) -> bool:
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
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return _decode(nvml.nvmlSystemGetDriverVersion())
    except nvml.NVMLError:  # the caller tries nvidia-smi next
        return None


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
