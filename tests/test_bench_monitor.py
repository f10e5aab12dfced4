"""The throttle verdict from recorded (fake) NVML samples, and the sampling thread."""

from __future__ import annotations

import pytest

from fluxperf.bench.fakes import FakeReader
from fluxperf.bench.monitor import REASON_BITS, GpuMonitor, Sample, reason_names, summarize, throttle_verdict

CAP, THERMAL, IDLE = REASON_BITS["sw_power_cap"], REASON_BITS["hw_thermal"], REASON_BITS["gpu_idle"]


def series(n, clock, reasons=0, temp=65.0, power=690.0):
    return [Sample(t=0.05 * i, temp_c=temp, sm_clock_mhz=clock, power_w=power, reasons=reasons) for i in range(n)]


def test_power_capped_healthy_h100_is_valid():
    """m2 in DEVICE.md: 689 W of 700, 1650 MHz, SW power cap all along: normal for this workload."""
    v = throttle_verdict(series(100, 1650, CAP), max_sm_clock_mhz=1980,
                         counters_delta_ns={"sw_power_cap": 6_900_000_000}, window_s=10.0)
    assert not v.throttled and v.reasons == ()


def test_thermal_throttle_at_555_mhz_is_invalid():
    """m1 in DEVICE.md: 87 C and 555 MHz under load."""
    v = throttle_verdict(series(100, 555, CAP | THERMAL, temp=87), max_sm_clock_mhz=1980)
    assert v.throttled
    assert any("hw_thermal" in r for r in v.reasons)
    assert any("555 MHz" in r for r in v.reasons)


def test_low_clock_alone_is_invalid_but_idle_samples_do_not_count():
    assert throttle_verdict(series(50, 700), max_sm_clock_mhz=1980).throttled
    idle = series(50, 345, IDLE) + series(50, 1700, CAP)
    assert not throttle_verdict(idle, max_sm_clock_mhz=1980).throttled


def test_counters_catch_throttling_between_samples():
    v = throttle_verdict(series(20, 1650), max_sm_clock_mhz=1980, counters_delta_ns={"sw_thermal": 500_000_000},
                         window_s=5.0)
    assert v.throttled and "sw_thermal counter" in v.reasons[0]


def test_a_single_stray_thermal_sample_is_tolerated():
    samples = series(99, 1650, CAP) + series(1, 1650, CAP | THERMAL)
    assert not throttle_verdict(samples, max_sm_clock_mhz=1980).throttled


def test_summary_ranges_and_reason_names():
    s = summarize(series(10, 1650, CAP) + series(2, 1500, CAP, temp=80), max_sm_clock_mhz=1980,
                  counters_delta_ns={"sw_power_cap": 2e9}, window_s=1.0)
    assert s["temp_c"]["max"] == 80 and s["sm_clock_mhz"]["min"] == 1500
    assert s["reasons_seen"] == ["sw_power_cap"] and s["counters_delta_s"] == {"sw_power_cap": 2.0}
    assert reason_names(CAP | THERMAL) == ["sw_power_cap", "hw_thermal"]


def test_monitor_thread_records_fake_reader_and_judges():
    reader = FakeReader(series(5, 555, THERMAL, temp=88), counters=[{"hw_thermal": 0}, {"hw_thermal": 10**9}])
    with GpuMonitor(reader=reader, interval_s=0.001) as mon:
        pass
    assert len(mon.samples) >= 1
    assert mon.summary["verdict"]["throttled"] is True
    assert mon.summary["counters_delta_s"] == {"hw_thermal": pytest.approx(1.0)}


def test_monitor_without_nvml_reports_unavailable(monkeypatch):
    import fluxperf.bench.monitor as m

    def no_reader(monitor):
        monitor.unavailable = "nvidia-ml-py is not available"
        return None

    monkeypatch.setattr(m, "_default_reader", no_reader)
    with GpuMonitor() as mon:
        pass
    assert mon.summary["available"] is False and mon.summary["verdict"]["throttled"] is False


def test_sampling_failure_is_recorded_not_hidden():
    class Failing(FakeReader):
        def read(self):
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    with GpuMonitor(reader=Failing(series(1, 1650)), interval_s=0.001) as mon:
        pass
    assert "GPU_IS_LOST" in mon.summary["sampling_error"]
