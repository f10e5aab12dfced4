"""One GPU identity: the CUDA device in use, matched to NVML by UUID (never NVML index 0), used by the baseline
directory, the NVML monitor and the fingerprint. Tested with a stub NVML of two different GPUs."""

from __future__ import annotations

import sys
import types

import pytest

from fluxperf import env
from fluxperf.bench.monitor import NvmlReader

A100 = ("NVIDIA A100-SXM4-80GB", "GPU-aaaa0000-0000-0000-0000-000000000000", (8, 0), 80.0)
H100 = ("NVIDIA H100 80GB HBM3", "GPU-hhhh1111-1111-1111-1111-111111111111", (9, 0), 55.0)


class NVMLError(Exception):
    pass


def stub_nvml(gpus):
    """A pynvml stand-in: NVML index order = `gpus` order (PCI order), each with its own temperature."""
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.NVML_CLOCK_SM, m.NVML_TEMPERATURE_GPU = 1, 0
    handles = [{"i": i, "name": n, "uuid": u, "cc": cc, "temp": t} for i, (n, u, cc, t) in enumerate(gpus)]
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetHandleByIndex = lambda i: handles[i]

    def by_uuid(u):
        for h in handles:
            if h["uuid"] == u:
                return h
        raise NVMLError(f"no GPU {u}")

    m.nvmlDeviceGetHandleByUUID = by_uuid
    m.nvmlDeviceGetName = lambda h: h["name"]
    m.nvmlDeviceGetUUID = lambda h: h["uuid"]
    m.nvmlDeviceGetIndex = lambda h: h["i"]
    m.nvmlDeviceGetCudaComputeCapability = lambda h: h["cc"]
    m.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1980
    m.nvmlDeviceGetClockInfo = lambda h, kind: 1700
    m.nvmlDeviceGetTemperature = lambda h, kind: h["temp"]
    m.nvmlDeviceGetPowerUsage = lambda h: 690_000
    m.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0
    m.nvmlSystemGetDriverVersion = lambda: "580.159.04"
    return m


@pytest.fixture
def two_gpus(monkeypatch):
    """Physical GPU 0 an A100, GPU 1 an H100; the run is pinned to GPU 1."""
    monkeypatch.setitem(sys.modules, "pynvml", stub_nvml([A100, H100]))
    monkeypatch.setattr(env, "find_module", lambda name: name == "pynvml" or None)
    monkeypatch.setattr("fluxperf.optional.require", lambda name: sys.modules[name])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.delenv(env.GPU_NAME_ENV, raising=False)


def test_pinned_run_is_the_h100_through_torch_and_uuid(two_gpus, monkeypatch):
    # torch (which honours CUDA_VISIBLE_DEVICES) sees one device: the H100, as CUDA device 0
    monkeypatch.setattr(env, "_torch_device", lambda device: (H100[0], H100[1], "9.0", 0))
    ident = env.gpu_identity()
    assert (ident.name, ident.nvml_index, ident.cuda_index, ident.family) == (H100[0], 1, 0, "sm90")
    assert ident.slug == "nvidia-h100-80gb-hbm3"
    reader = NvmlReader(ident)
    assert reader.read().temp_c == H100[3]  # the H100's sensors, not the A100's (55, not 80 C)


def test_without_cuda_in_torch_nvml_maps_the_visible_device(two_gpus, monkeypatch):
    monkeypatch.setattr(env, "_torch_device", lambda device: None)
    ident = env.gpu_identity()
    assert (ident.name, ident.nvml_index, ident.source) == (H100[0], 1, "nvml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", A100[1])  # a UUID entry
    assert env.gpu_identity().name == A100[0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every GPU hidden
    assert env.gpu_identity() is None


def test_without_nvidia_ml_py_the_identity_comes_from_torch(monkeypatch):
    monkeypatch.setattr(env, "_nvml", lambda: None)
    monkeypatch.delenv(env.GPU_NAME_ENV, raising=False)
    monkeypatch.setattr(env, "_torch_device", lambda device: (H100[0], H100[1], "9.0", 0))
    ident = env.gpu_identity()
    assert ident.name == H100[0] and ident.nvml_index is None and ident.source == "torch"


def test_the_baseline_directory_follows_the_pinned_gpu(two_gpus, monkeypatch):
    from fluxperf.bench.baseline import detect_gpu, machine_fingerprint

    monkeypatch.setattr(env, "_torch_device", lambda device: (H100[0], H100[1], "9.0", 0))
    monkeypatch.setattr(env, "gpu_info", lambda device=None: {"name": H100[0], "slug": "nvidia-h100-80gb-hbm3"})
    assert detect_gpu().slug == "nvidia-h100-80gb-hbm3"
    assert machine_fingerprint()["slug"] == "nvidia-h100-80gb-hbm3"


def test_override_keeps_working_and_names_its_source(monkeypatch):
    monkeypatch.setenv(env.GPU_NAME_ENV, "NVIDIA H200")
    monkeypatch.setenv(env.GPU_CAPABILITY_ENV, "9.0")
    ident = env.gpu_identity()
    assert (ident.slug, ident.family, ident.source) == ("nvidia-h200", "sm90", env.GPU_NAME_ENV)
    assert env.capability_family("10.0") == "sm100" and env.capability_family(None) is None
