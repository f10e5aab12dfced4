"""Fabricated records for CPU tests and demos: pytest-benchmark run JSONs and a recorded NVML reader.

Example:
    >>> run = fake_run({"perf/test_x.py::test_a": [0.1, 0.101, 0.099]}, gpu="NVIDIA H100 80GB HBM3")
    >>> run["machine_info"]["fluxperf"]["slug"], run["benchmarks"][0]["stats"]["median"]
    ('nvidia-h100-80gb-hbm3', 0.1)
"""

from __future__ import annotations

import random

from fluxperf.bench.monitor import Sample
from fluxperf.env import gpu_slug

H100 = "NVIDIA H100 80GB HBM3"


def noisy(median_s: float, n: int, *, cv: float = 0.005, seed: int = 0) -> list[float]:
    """n positive samples around median_s with relative noise cv (seeded)."""
    rng = random.Random(seed)
    return [median_s * (1.0 + rng.gauss(0.0, cv)) for _ in range(n)]


def fake_calibration(scale: float = 1.0) -> dict:
    """A calibration dict as run_calibration returns it, every kernel `scale` times slower than a healthy H100."""
    return {"bf16_gemm": {"ms": 1.41 * scale, "tflops": 780 / scale}, "fp8_gemm": {"ms": 0.78 * scale, "tflops": 1410 / scale},
            "copy": {"ms": 0.72 * scale, "tbps": 3.0 / scale}}


def fake_bench(fullname: str, data_s: list[float], extra_info: dict | None = None) -> dict:
    """One benchmark entry of a pytest-benchmark JSON, with pytest-benchmark's own statistics."""
    from pytest_benchmark.stats import Stats

    st = Stats()
    for x in data_s:
        st.update(x)
    stats = {**st.as_dict(), "data": list(data_s), "iterations": 1}
    param = fullname.split("[")[-1].rstrip("]") if "[" in fullname else None
    return {"group": None, "name": fullname.split("::")[-1], "fullname": fullname, "params": None, "param": param,
            "extra_info": dict(extra_info or {}), "options": {"timer": "cuda_event_clock", "min_rounds": len(data_s)},
            "stats": stats}


def fake_run(benchmarks: dict[str, list[float]], *, gpu: str = H100, versions: dict | None = None,
             extra_info: dict | None = None) -> dict:
    """A pytest-benchmark --benchmark-json document whose machine_info carries our fingerprint."""
    fp = {"gpu": {"name": gpu, "slug": gpu_slug(gpu), "capability": "9.0", "driver": "580.159.04", "cuda": "13.0"},
          "slug": gpu_slug(gpu), "versions": {"torch": "2.11.0", "diffusers": "0.42.1", **(versions or {})},
          "host": "box-1"}
    return {"machine_info": {"node": "box-1", "fluxperf": fp}, "commit_info": {"id": "abc123"},
            "benchmarks": [fake_bench(name, data, extra_info) for name, data in benchmarks.items()],
            "datetime": "2026-11-23T00:00:00+00:00", "version": "5.2.3", "fluxperf": {"selected": list(benchmarks)}}


class FakeReader:
    """A recorded NVML reader: returns the given samples in order (the last one repeats), fixed counters."""

    def __init__(self, samples: list[Sample], *, max_sm_clock_mhz: float = 1980.0,
                 counters: list[dict] | None = None):
        self._samples, self._i = list(samples), 0
        self.max_sm_clock_mhz = max_sm_clock_mhz
        self._counters = list(counters or [{}, {}])
        self._c = 0

    def read(self) -> Sample:
        s = self._samples[min(self._i, len(self._samples) - 1)]
        self._i += 1
        return s

    def counters(self) -> dict:
        c = self._counters[min(self._c, len(self._counters) - 1)]
        self._c += 1
        return dict(c)
