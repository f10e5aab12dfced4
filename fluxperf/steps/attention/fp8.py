"""fp8 quantization for attention inputs, shared by the GPU ops and their CPU reference kernels.

Two modes, both for q, k, v laid out (batch, seq, heads, head_dim):
  * unscaled: a plain `x.to(float8)` (flux-fast's); no descale (None).
  * scaled: per-(batch, kv-head) amax scaling (FA3's descale layout (batch, heads_kv), fp32), or per-tensor
    (aiter's layout (1,), fp32): x is multiplied by fp8_max / amax before the cast and the kernel multiplies by
    the descale amax / fp8_max.

Only torch is imported, inside functions' module (this module is loaded lazily by fluxperf.steps.attention.ops).

Example:
    >>> import torch
    >>> x = torch.randn(2, 8, 4, 16)
    >>> x8, descale = quantize(x, "per_head", torch.float8_e4m3fn)
    >>> x8.dtype, tuple(descale.shape)
    (torch.float8_e4m3fn, (2, 4))
"""

from __future__ import annotations

import torch

SCALINGS = ("unscaled", "per_head", "per_tensor")
_AMAX_FLOOR = 1e-12  # an all-zero head must not divide by zero


def quantize(x: torch.Tensor, scaling: str, fp8_dtype: torch.dtype, kv_heads: int | None = None):
    """Cast x (B, S, H, D) to fp8; returns (x_fp8 contiguous (B, S, H, D), descale fp32 or None).

    Args:
        x: input, any float dtype.
        scaling: "unscaled" (plain cast, descale None), "per_head" (descale (B, kv_heads)) or
            "per_tensor" (descale (1,)).
        fp8_dtype: torch.float8_e4m3fn (NVIDIA, OCP) or torch.float8_e4m3fnuz (AMD MI300).
        kv_heads: for q under GQA: group q's heads into this many kv groups (FA3's q_descale is (B, H_kv)).
    """
    if x.ndim != 4:
        raise ValueError(f"fp8 attention input must be 4-D (batch, seq, heads, head_dim), got shape {tuple(x.shape)}")
    if scaling == "unscaled":
        return x.to(fp8_dtype, memory_format=torch.contiguous_format), None
    fp8_max = torch.finfo(fp8_dtype).max
    xf = x.float()
    if scaling == "per_head":
        b, _, h, _ = x.shape
        groups = kv_heads or h
        if h % groups:
            raise ValueError(f"heads={h} is not a multiple of kv_heads={groups}")
        amax = xf.abs().amax(dim=(1, 3)).reshape(b, groups, h // groups).amax(dim=2)  # (B, H_kv)
        amax = amax.clamp(min=_AMAX_FLOOR)
        scale = (fp8_max / amax).repeat_interleave(h // groups, dim=1)  # (B, H)
        x8 = (xf * scale[:, None, :, None]).to(fp8_dtype, memory_format=torch.contiguous_format)
        return x8, (amax / fp8_max).contiguous()
    if scaling == "per_tensor":
        amax = xf.abs().amax().clamp(min=_AMAX_FLOOR).reshape(1)
        x8 = (xf * (fp8_max / amax)).to(fp8_dtype, memory_format=torch.contiguous_format)
        return x8, amax / fp8_max
    raise ValueError(f"fp8 scaling={scaling!r} is not known. Fix: use one of {list(SCALINGS)}.")


def dequantize(x8: torch.Tensor, descale: torch.Tensor | None) -> torch.Tensor:
    """fp32 values the fp8 kernel sees: x8 * descale (descale (B, H_kv) broadcast over q's head groups, or (1,))."""
    xf = x8.float()
    if descale is None:
        return xf
    if descale.numel() == 1:
        return xf * descale.reshape(())
    b, _, h, _ = x8.shape
    per_head = descale.repeat_interleave(h // descale.shape[1], dim=1)  # (B, H)
    return xf * per_head[:, None, :, None]


def reference_fp8_attention(q, k, v, softmax_scale: float | None, scaling: str, fp8_dtype, out_dtype):
    """CPU reference of an fp8 flash-attention kernel (a reference, NOT a fast path).

    Emulates the kernel's numerics: q, k, v quantized exactly as the GPU op does, scores in fp32, softmax
    probabilities P rounded to fp8 before P @ V (FA3 feeds P to an fp8 tensor-core GEMM; on random normal
    inputs at (1, 4608, 24, 128) this emulation gives 0.054 relative error vs fp32, FA3 measured 0.053),
    normalization in fp32. Materializes the (S_q, S_k) score matrix per (batch, head): small shapes only.

    Returns (B, S_q, H, D_v) contiguous in out_dtype.
    """
    kv_heads = k.shape[2]
    q8, qd = quantize(q, scaling, fp8_dtype, kv_heads=kv_heads)
    k8, kd = quantize(k, scaling, fp8_dtype)
    v8, vd = quantize(v, scaling, fp8_dtype)
    qf, kf, vf = (dequantize(t, d).transpose(1, 2) for t, d in ((q8, qd), (k8, kd), (v8, vd)))  # (B, H, S, D)
    if kv_heads != q.shape[2]:
        rep = q.shape[2] // kv_heads
        kf, vf = kf.repeat_interleave(rep, dim=1), vf.repeat_interleave(rep, dim=1)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    scores = (qf @ kf.transpose(-1, -2)) * scale
    p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    denom = p.sum(dim=-1, keepdim=True)
    out = (p.to(fp8_dtype).float() @ vf) / denom
    return out.transpose(1, 2).to(out_dtype).contiguous()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_2 / ||ref||_2 in fp32 (the metric of DEVICE.md's attention measurements)."""
    ref = ref.float()
    return ((out.float() - ref).norm() / ref.norm().clamp(min=1e-30)).item()
