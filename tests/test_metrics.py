"""PSNR helper properties (scikit-image underneath)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fluxperf.measure.metrics import compare_images, psnr, relative_error, sqnr_db, ssim

images = arrays(np.uint8, st.tuples(st.integers(4, 16), st.integers(4, 16), st.just(3)))


@given(images)
def test_identical_images_have_infinite_psnr_and_unit_ssim(img):
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0)


@settings(deadline=None)
@given(sigma=st.floats(0.005, 0.2), seed=st.integers(0, 10_000))
def test_known_gaussian_noise_gives_the_expected_psnr(sigma, seed):
    rng = np.random.default_rng(seed)
    ref = np.full((256, 256, 3), 0.5)
    noisy = ref + rng.normal(0, sigma, ref.shape)  # sigma <= 0.2 around 0.5: clipping is negligible
    noisy = np.clip(noisy, 0, 1)
    expected = 10 * math.log10(1.0 / sigma**2)  # data range 1, MSE = sigma^2
    assert psnr(noisy, ref) == pytest.approx(expected, abs=0.15)


@given(images, images)
def test_psnr_is_symmetric(a, b):
    if a.shape == b.shape:
        assert psnr(a, b) == pytest.approx(psnr(b, a))


def test_uint8_and_float_inputs_agree():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert psnr(a, b) == pytest.approx(psnr(a / 255.0, b / 255.0))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        psnr(np.full((4, 4, 3), np.nan), np.zeros((4, 4, 3)))
    with pytest.raises(TypeError, match="uint8 or float"):
        psnr(np.zeros((4, 4, 3), np.int32), np.zeros((4, 4, 3), np.int32))


def test_compare_images_reports_all_three():
    a = np.zeros((8, 8, 3))
    b = a.copy()
    b[0, 0, 0] = 0.5
    m = compare_images(b, a)
    assert m["max_abs_error"] == 0.5 and m["psnr_db"] > 20 and m["ssim"] < 1


def test_relative_error_and_sqnr():
    import torch

    x = torch.ones(100)
    assert relative_error(x * 1.01, x) == pytest.approx(0.01)
    assert sqnr_db(x * 1.01, x) == pytest.approx(40.0)
    assert sqnr_db(x, x) == math.inf
