"""FLOP count of a FLUX transformer step: ~74 TFLOP at 1024x1024 with 512 text tokens."""

from __future__ import annotations

import pytest

from fluxperf.bench.flops import mfu, step_flops, tflops
from fluxperf.model.shapes import ShapeSpec


def test_1024_step_is_about_74_tflop_by_the_stated_formula():
    f = step_flops(ShapeSpec("dev", 1024, 1024))
    d, s = 3072, 4096 + 512
    # 57 blocks x 24 D^2 per token (linear) + 57 x 4 S^2 D (QK^T and PV)
    assert f.linear == pytest.approx(57 * 24 * d * d * s)
    assert f.attention == pytest.approx(57 * 4 * s * s * d)
    assert f.linear / 1e12 == pytest.approx(59.5, abs=0.1)
    assert f.attention / 1e12 == pytest.approx(14.9, abs=0.1)
    assert f.total / 1e12 == pytest.approx(74.4, abs=0.2)
    assert f.embed < 1e-3 * f.total


def test_flops_scale_with_batch_and_resolution():
    one, two = step_flops(ShapeSpec("schnell", 1024, 1024)), step_flops(ShapeSpec("schnell", 1024, 1024, batch=2))
    assert two.total == pytest.approx(2 * one.total)
    assert step_flops(ShapeSpec("schnell", 512, 512)).total < one.total / 3
    assert one.total / 1e12 == pytest.approx(69.5, abs=0.1)  # schnell: 256 text tokens


def test_tflops_and_mfu():
    assert tflops(74.4e12, 131.0) == pytest.approx(567.9, abs=0.1)
    assert mfu(74.4e12, 131.0, 780.0) == pytest.approx(0.728, abs=0.001)
    with pytest.raises(ValueError, match="peak_tflops"):
        mfu(1e12, 1.0, 0.0)
