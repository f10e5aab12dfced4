"""Calibration normalization math: machine speed factor, normalized samples, drift."""

from __future__ import annotations

import math

import pytest

from fluxperf.bench import calibration as cal
from fluxperf.bench.fakes import fake_calibration


def test_speed_factor_is_geometric_mean_of_kernel_ratios():
    base = fake_calibration()
    cur = {"bf16_gemm": {"ms": base["bf16_gemm"]["ms"] * 1.10}, "fp8_gemm": {"ms": base["fp8_gemm"]["ms"] * 1.00},
           "copy": {"ms": base["copy"]["ms"] * 1.0}}
    assert cal.speed_factor(cur, base) == pytest.approx(math.exp(math.log(1.1) / 3))


def test_normalizing_a_slower_machine_recovers_the_baseline():
    base_cal, cur_cal = fake_calibration(1.0), fake_calibration(1.06)  # the 131 vs 139 ms machines
    factor = cal.speed_factor(cur_cal, base_cal)
    assert factor == pytest.approx(1.06)
    assert cal.normalize([139.0, 140.4], factor) == pytest.approx([131.13, 132.45], abs=0.01)


def test_speed_factor_only_uses_shared_valid_kernels():
    base = fake_calibration()
    cur = {"bf16_gemm": {"ms": base["bf16_gemm"]["ms"] * 1.2}}  # no fp8 on this GPU
    assert cal.speed_factor(cur, base) == pytest.approx(1.2)
    assert cal.speed_factor({"copy": {"ms": 0}}, base) is None
    assert cal.speed_factor({}, base) is None


def test_drift_and_combine():
    before, after = fake_calibration(1.0), fake_calibration(1.08)
    assert cal.drift(before, after) == pytest.approx(0.08)
    assert cal.drift(before, before) == 0.0
    mid = cal.combine(before, after)
    assert mid["bf16_gemm"]["ms"] == pytest.approx(1.41 * 1.04)
    assert cal.combine(before, {})["copy"]["ms"] == pytest.approx(0.72)


def test_normalize_rejects_bad_factor():
    with pytest.raises(ValueError, match="factor"):
        cal.normalize([1.0], 0.0)
