"""Image and tensor comparison metrics: PSNR / SSIM (scikit-image), relative error, SQNR.

Example:
    >>> import numpy as np
    >>> a = np.zeros((8, 8, 3), np.uint8)
    >>> psnr(a, a)
    inf
"""

from __future__ import annotations

import math

import numpy as np


def as_float_image(image) -> np.ndarray:
    """HxWxC (or NxHxWxC) array in [0, 1] float64 from a PIL image, uint8 array or float array in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"image dtype {arr.dtype} is not supported. Fix: pass uint8 or float images in [0, 1].")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or inf values; PSNR is undefined. Fix: check the pipeline output.")
    return arr.astype(np.float64)


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_float_image(a), as_float_image(b)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}. Fix: compare images of the same size.")
    return x, y


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio in dB (data range 1.0 after conversion); inf for identical images.

    Args:
        image, reference: PIL images or arrays (uint8, or float in [0, 1]) of the same shape.
    """
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _check_pair(image, reference)
    if np.array_equal(x, y):
        return math.inf
    return float(peak_signal_noise_ratio(y, x, data_range=1.0))


def ssim(image, reference) -> float:
    """Structural similarity (scikit-image), channels last; 1.0 for identical images."""
    from skimage.metrics import structural_similarity

    x, y = _check_pair(image, reference)
    if x.ndim == 4:
        return float(np.mean([ssim(a, b) for a, b in zip(x, y)]))
    small = min(x.shape[0], x.shape[1])
    win = min(7, small if small % 2 else small - 1)
    return float(structural_similarity(y, x, data_range=1.0, channel_axis=-1 if x.ndim == 3 else None,
                                       win_size=win))


def max_abs_error(image, reference) -> float:
    x, y = _check_pair(image, reference)
    return float(np.max(np.abs(x - y)))


def compare_images(image, reference) -> dict[str, float]:
    """PSNR, SSIM and max abs error in one dict (for reports and failure messages)."""
    return {"psnr_db": psnr(image, reference), "ssim": ssim(image, reference),
            "max_abs_error": max_abs_error(image, reference)}


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| computed in float64 (torch tensors or arrays)."""
    import torch

    o = torch.as_tensor(out).double().flatten()
    r = torch.as_tensor(ref).double().flatten().to(o.device)
    denom = torch.linalg.vector_norm(r)
    if denom == 0:
        raise ValueError("reference has zero norm; relative error is undefined.")
    return float(torch.linalg.vector_norm(o - r) / denom)


def sqnr_db(out, ref) -> float:
    """Signal-to-quantization-noise ratio in dB: 20*log10(||ref|| / ||out - ref||); inf when equal."""
    err = relative_error(out, ref)
    return math.inf if err == 0 else -20.0 * math.log10(err)
