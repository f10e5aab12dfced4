"""AMD aiter fp8 flash attention as the torch custom op `fluxperf::aiter_fp8`, same interface as fa3_fp8.

Kernel used (looked up in ROCm/aiter, `aiter/ops/mha.py`, exported at top level as `aiter.flash_attn_fp8_pertensor_func`):

    flash_attn_fp8_pertensor_func(q, k, v, q_descale, k_descale, v_descale, causal=False,
                                  window_size=(-1, -1, 0), softmax_scale=None)

q, k, v are (batch, seq, heads, head_dim) in aiter's fp8 dtype (`aiter.dtypes.fp8`: float8_e4m3fnuz on MI300 /
gfx942, float8_e4m3fn on gfx950); descales are PER-TENSOR fp32 tensors of shape (1,) (aiter's own tests and
callers such as xDiT pass `scale.reshape(1)`); forward only; returns the output tensor. So this op's `scaled=True`
means per-tensor amax scaling (reported as fp8_scaling "per_tensor"), not FA3's per-head scaling.
The plain cast (scaled=False) turns |x| > 240 into NaN in float8_e4m3fnuz (torch does not saturate FNUZ casts).

Not run here (no AMD GPU): the fake and the CPU reference kernel are tested on CPU; the ROCm kernel is untested.

Example:
    >>> import torch
    >>> from fluxperf.steps.attention import aiter_ops
    >>> q = torch.randn(1, 32, 2, 16, dtype=torch.bfloat16)
    >>> aiter_ops.aiter_fp8(q, q, q).dtype  # CPU: the reference kernel
    torch.bfloat16
"""

import functools

import torch

from fluxperf.steps.attention import fp8
from fluxperf.steps.attention.ops import unpack_output

AITER_FP8_OP = "fluxperf::aiter_fp8"
# MI300 (gfx942), the first target, uses the FNUZ variant; the CPU reference emulates that one.
REFERENCE_FP8_DTYPE = torch.float8_e4m3fnuz


@functools.cache
def aiter_module():
    """The imported `aiter` package (probed once); UnavailableError with the install hint if missing."""
    from fluxperf.optional import require

    return require("aiter")


def aiter_fp8_dtype(module) -> torch.dtype:
    """aiter's fp8 dtype for this GPU (`aiter.dtypes.fp8`), float8_e4m3fnuz if the build has no such attribute."""
    dtypes = getattr(module, "dtypes", None)
    return getattr(dtypes, "fp8", REFERENCE_FP8_DTYPE)


def aiter_fp8_impl(q, k, v, softmax_scale=None, scaled=False, *, module=None) -> torch.Tensor:
    """Body of the ROCm kernel of fluxperf::aiter_fp8. `module` defaults to the probed aiter package."""
    module = module or aiter_module()
    dtype = aiter_fp8_dtype(module)
    scaling = "per_tensor" if scaled else "unscaled"
    quantized = [fp8.quantize(t, scaling, dtype) for t in (q, k, v)]
    # the kernel always takes descales: ones for the plain cast
    ones = torch.ones(1, dtype=torch.float32, device=q.device)
    (q8, qd), (k8, kd), (v8, vd) = ((t, ones if d is None else d) for t, d in quantized)
    result = module.flash_attn_fp8_pertensor_func(q8, k8, v8, qd, kd, vd, causal=False, softmax_scale=softmax_scale)
    out = unpack_output(result, (*q.shape[:-1], v.shape[-1]), "aiter.flash_attn_fp8_pertensor_func")
    return out.to(torch.bfloat16).contiguous()


# ROCm builds of torch use the "cuda" device type for AMD GPUs.
@torch.library.custom_op(AITER_FP8_OP, mutates_args=(), device_types="cuda")
def aiter_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None,
              scaled: bool = False) -> torch.Tensor:
    """aiter fp8 attention on q, k, v (B, S, H, D) bf16/fp16, cast inside the op; bf16 output (B, S_q, H, D_v)."""
    return aiter_fp8_impl(q, k, v, softmax_scale, scaled)


@aiter_fp8.register_kernel("cpu")
def _aiter_fp8_cpu(q, k, v, softmax_scale=None, scaled=False):
    # Reference only (float8_e4m3fnuz emulated in fp32), not a fast path.
    return fp8.reference_fp8_attention(q, k, v, softmax_scale, "per_tensor" if scaled else "unscaled",
                                       REFERENCE_FP8_DTYPE, torch.bfloat16)


@aiter_fp8.register_fake
def _aiter_fp8_fake(q, k, v, softmax_scale=None, scaled=False):
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=torch.bfloat16)
