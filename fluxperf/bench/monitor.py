"""Watch the GPU while it is measured: an NVML sampling thread and a throttle verdict.

A lent H100 once throttled to 555 MHz at 87 C and ran the step 2.5x slower with nothing wrong in the code
(shared/DEVICE.md). So every timed region runs inside a `GpuMonitor`, which samples temperature, SM clock,
power and the clock-event-reason bits, and reads NVML's accumulated clock-event counters (nanoseconds spent
in SW power cap / SW thermal / HW thermal / HW power brake) at start and stop. `throttle_verdict` turns
that into "valid" or "invalid, because ...". Power capping alone is normal for this power-bound workload
(a healthy H100 sat at 689 W of 700 W, 1650 MHz) and does not invalidate a measurement.

The NVML reads go through a `reader` object, so tests feed recorded fake samples.

Example:
    >>> s = [Sample(t=i * 0.1, temp_c=60, sm_clock_mhz=1650, power_w=690, reasons=REASON_BITS["sw_power_cap"])
    ...      for i in range(10)]
    >>> throttle_verdict(s, max_sm_clock_mhz=1980).throttled
    False
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

# NVML clock-event reason bits (nvmlClocksEventReason*; stable values across driver versions).
REASON_BITS = {
    "gpu_idle": 0x1,
    "app_clocks": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
}
# Reasons that make a measurement invalid (thermal or external slowdown, not ordinary power capping).
INVALIDATING = ("hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")
# NVML field ids of the accumulated counters (ns), by reason name; looked up on pynvml at runtime.
_COUNTER_FIELDS = {
    "sw_power_cap": "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP",
    "sw_thermal": "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN",
    "hw_thermal": "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN",
    "hw_power_brake": "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN",
}

MIN_CLOCK_FRACTION = 0.6  # busy median SM clock below 60% of max clock: throttled (healthy ~83% under power cap)
MAX_INVALID_FRACTION = 0.02  # more than 2% of samples (or of the window, by counters) in an invalidating state


@dataclass(frozen=True)
class Sample:
    """One NVML reading. `reasons` is the clock-event reason bitmask."""

    t: float
    temp_c: float
    sm_clock_mhz: float
    power_w: float
    reasons: int = 0


@dataclass(frozen=True)
class ThrottleVerdict:
    throttled: bool
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"throttled": self.throttled, "reasons": list(self.reasons)}


def reason_names(mask: int) -> list[str]:
    """Names of the bits set in a clock-event reason mask."""
    return [name for name, bit in REASON_BITS.items() if mask & bit]


def throttle_verdict(samples: list[Sample], *, max_sm_clock_mhz: float | None, counters_delta_ns: dict | None = None,
                     window_s: float | None = None) -> ThrottleVerdict:
    """Decide whether a measurement window was throttled.

    Args:
        samples: NVML samples taken during the window.
        max_sm_clock_mhz: the GPU's maximum SM clock (NVML max clock info); None skips the clock rule.
        counters_delta_ns: increase of the accumulated clock-event counters over the window, by reason name.
        window_s: the window's length (to turn counters into fractions of time).

    Rules: invalidating reason bits (thermal, HW slowdown, power brake) in more than 2% of samples; an
    invalidating counter grown by more than 2% of the window; or the median SM clock of busy samples below
    60% of the maximum clock.
    """
    why = []
    busy = [s for s in samples if not s.reasons & REASON_BITS["gpu_idle"]]
    for name in INVALIDATING:
        hits = sum(1 for s in samples if s.reasons & REASON_BITS[name])
        if samples and hits / len(samples) > MAX_INVALID_FRACTION:
            why.append(f"{name} in {hits}/{len(samples)} samples")
    if counters_delta_ns and window_s:
        for name, ns in counters_delta_ns.items():
            if name in INVALIDATING and ns / 1e9 > MAX_INVALID_FRACTION * window_s:
                why.append(f"{name} counter +{ns / 1e9:.2f} s of a {window_s:.1f} s window")
    if busy and max_sm_clock_mhz:
        med = statistics.median(s.sm_clock_mhz for s in busy)
        if med < MIN_CLOCK_FRACTION * max_sm_clock_mhz:
            why.append(f"median SM clock {med:.0f} MHz < {MIN_CLOCK_FRACTION:.0%} of max {max_sm_clock_mhz:.0f} MHz")
    return ThrottleVerdict(bool(why), tuple(why))


def summarize(samples: list[Sample], *, max_sm_clock_mhz: float | None, counters_delta_ns: dict | None,
              window_s: float) -> dict:
    """A JSON-ready summary of a window: ranges of each reading, reasons seen, counters and the verdict."""
    verdict = throttle_verdict(samples, max_sm_clock_mhz=max_sm_clock_mhz, counters_delta_ns=counters_delta_ns,
                               window_s=window_s)
    out = {"available": True, "samples": len(samples), "window_s": round(window_s, 3),
           "max_sm_clock_mhz": max_sm_clock_mhz, "counters_delta_s": {k: v / 1e9 for k, v in (counters_delta_ns or {}).items()},
           "verdict": verdict.to_dict()}
    if samples:
        mask = 0
        for s in samples:
            mask |= s.reasons
        for key in ("temp_c", "sm_clock_mhz", "power_w"):
            values = [getattr(s, key) for s in samples]
            out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
        out["reasons_seen"] = reason_names(mask)
    return out


class NvmlReader:
    """Reads the GPU this process measures through pynvml (nvidia-ml-py): the CUDA device in use, found in NVML by
    UUID (fluxperf.env.gpu_identity), never NVML index 0 (which ignores CUDA_VISIBLE_DEVICES).

    Raises:
        UnavailableError: nvidia-ml-py missing, or NVML cannot find the device.
    """

    def __init__(self, identity=None):
        from fluxperf.env import gpu_identity, nvml_handle
        from fluxperf.errors import UnavailableError
        from fluxperf.optional import require

        self.nvml = require("pynvml")
        self.identity = identity if identity is not None else gpu_identity()
        self.handle = nvml_handle(self.identity)
        if self.handle is None:
            raise UnavailableError("NVML", f"no NVML device for {self.identity}", "install nvidia-ml-py and run on "
                                   "the GPU's host (the UUID must be visible to NVML)")
        self.max_sm_clock_mhz = float(self.nvml.nvmlDeviceGetMaxClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))

    def read(self) -> Sample:
        n, h = self.nvml, self.handle
        get_reasons = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or n.nvmlDeviceGetCurrentClocksThrottleReasons
        return Sample(t=time.monotonic(), temp_c=float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
                      sm_clock_mhz=float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
                      power_w=n.nvmlDeviceGetPowerUsage(h) / 1000.0, reasons=int(get_reasons(h)))

    def counters(self) -> dict[str, int]:
        """Accumulated ns per clock-event reason (only the fields this driver/pynvml supports)."""
        n = self.nvml
        ids = {name: getattr(n, attr) for name, attr in _COUNTER_FIELDS.items() if hasattr(n, attr)}
        if not ids:
            return {}
        try:
            values = n.nvmlDeviceGetFieldValues(self.handle, list(ids.values()))
        except n.NVMLError:  # old driver: no counters; the bitmask samples still decide
            return {}
        return {name: int(v.value.ullVal) for name, v in zip(ids, values) if v.nvmlReturn == n.NVML_SUCCESS}


@dataclass
class GpuMonitor:
    """Context manager sampling the GPU in a background thread.

    Args:
        reader: an object with read() -> Sample, counters() -> dict and max_sm_clock_mhz; None: NvmlReader() of
            the CUDA device in use,
            or an "unavailable" summary when NVML cannot be used.
        interval_s: sampling period.

    Example:
        >>> with GpuMonitor(reader=None, interval_s=0.05) as mon:  # doctest: +SKIP
        ...     run_the_benchmark()
        >>> mon.summary["verdict"]["throttled"]  # doctest: +SKIP
        False
    """

    reader: object | None = None
    interval_s: float = 0.05
    samples: list[Sample] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    unavailable: str | None = None
    sampling_error: str | None = None

    def __enter__(self) -> GpuMonitor:
        if self.reader is None:
            self.reader = _default_reader(self)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._c0 = self.reader.counters() if self.reader else {}
        self._thread = threading.Thread(target=self._loop, name="fluxperf-gpu-monitor", daemon=True)
        if self.reader:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.reader:
            self._thread.join()
            self._read_into_samples()
        window = time.monotonic() - self._t0
        if not self.reader:
            self.summary = {"available": False, "why": self.unavailable, "verdict": ThrottleVerdict(False).to_dict()}
            return
        c1 = self.reader.counters()
        delta = {k: c1[k] - self._c0[k] for k in c1 if k in self._c0}
        self.summary = summarize(self.samples, max_sm_clock_mhz=self.reader.max_sm_clock_mhz,
                                 counters_delta_ns=delta, window_s=window)
        if self.sampling_error:
            self.summary["sampling_error"] = self.sampling_error

    def _loop(self) -> None:
        while not self._stop.is_set() and self._read_into_samples():
            self._stop.wait(self.interval_s)

    def _read_into_samples(self) -> bool:
        """Append one sample; on an NVML failure record it in the summary and stop sampling (False)."""
        try:
            self.samples.append(self.reader.read())
            return True
        except Exception as exc:  # pynvml.NVMLError (no common importable base): recorded, reported, not hidden
            self.sampling_error = f"{type(exc).__name__}: {exc}"
            return False


def _default_reader(monitor: GpuMonitor):
    from fluxperf.errors import UnavailableError

    try:
        return NvmlReader()
    except UnavailableError as exc:
        monitor.unavailable = str(exc)
    except Exception as exc:  # pynvml.NVMLError has no importable base here; record it, never hide it
        monitor.unavailable = f"NVML failed: {type(exc).__name__}: {exc}"
    return None
