"""FlashAttention-3 as torch custom ops: `fluxperf::fa3` (bf16/fp16) and `fluxperf::fa3_fp8`.

Importing this module registers the ops (cheap: no FA3 import, no CUDA). `fluxperf.steps.attention` imports it lazily,
on first use of an op or of a processor that needs it. Code that loads an exported program or AOTInductor package
calling these ops must import this module (or call `fluxperf.steps.attention.register_ops()`) first.

Layout: q, k, v are (batch, seq, heads, head_dim), as FA3 and diffusers' FluxAttention use them.

* `fluxperf::fa3_fp8(q, k, v, softmax_scale=None, scaled=False)`: q, k, v in bf16/fp16 are cast to
  torch.float8_e4m3fn INSIDE the op (so torch.compile sees one opaque call, as in flux-fast); output bf16
  (B, S_q, H, D_v), contiguous. scaled=False: plain cast (flux-fast's; torch saturates |x| > 448 to 448);
  scaled=True: per-(batch, kv-head) amax scaling, passed to FA3 as q/k/v_descale (B, H_kv) fp32.
* `fluxperf::fa3(q, k, v, softmax_scale=None)`: FA3 on the inputs as they are; output in q's dtype.

Kernels: "cuda" calls FA3's `flash_attn_func`, from module `flash_attn_interface` (upstream, tokenspeed-fa3) or
`fa3_fwd_interface` (fa3-fwd), probed and imported once; its keyword names come from `fa3_api.Fa3Api` (signature
inspected once) and the descales are passed only when scaled=True. "cpu" is a REFERENCE kernel (fp8 emulated by
quantize-dequantize in fp32, see fp8.reference_fp8_attention), there so `torch.library.opcheck` and the
processor can run on a CPU; it is slow and materializes the score matrix. Fakes give shape/dtype/device only.

Example:
    >>> import torch
    >>> from fluxperf.steps.attention import ops
    >>> q = torch.randn(2, 64, 2, 32, dtype=torch.bfloat16)
    >>> ops.fa3_fp8(q, q, q).shape  # CPU: the reference kernel
    torch.Size([2, 64, 2, 32])
"""

import functools

import torch
import torch.nn.functional as F

from fluxperf.steps.attention import fp8
from fluxperf.steps.attention.fa3_api import Fa3Api

FA3_FP8_DTYPE = torch.float8_e4m3fn
FA3_OP = "fluxperf::fa3"
FA3_FP8_OP = "fluxperf::fa3_fp8"


# -- FA3 module: probed once --------------------------------------------------------------------------------
@functools.cache
def fa3_module():
    """The imported FA3 module (`flash_attn_interface` or `fa3_fwd_interface`); UnavailableError if none."""
    from fluxperf.optional import require

    return require("fa3")


def fa3_module_name() -> str | None:
    """Name of the FA3 module that would be used, without importing it (None if no build is installed)."""
    from fluxperf.optional import find_module

    return find_module("fa3")


def unpack_output(result, expected_shape: tuple[int, ...], where: str) -> torch.Tensor:
    """The attention output from a kernel's return value, by INSPECTION, never by a blind `[0]`.

    FA3 builds return either `out` or `(out, lse, ...)`. Indexing `[0]` on a bare tensor silently takes batch
    element 0 (flux-fast's bug at batch > 1, DESIGN.md lesson 6), so: a tensor must have the expected shape;
    a tuple/list must start with a tensor of the expected shape; anything else raises.

    Args:
        result: what the kernel returned.
        expected_shape: (B, S_q, H, D_v).
        where: kernel name for the error message.
    """
    expected = tuple(expected_shape)
    if isinstance(result, torch.Tensor):
        if tuple(result.shape) == expected:
            return result
        raise RuntimeError(f"{where} returned a tensor of shape {tuple(result.shape)}, expected {expected}")
    if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
        if tuple(result[0].shape) == expected:
            return result[0]
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in result]
        raise RuntimeError(f"{where} returned a {type(result).__name__} with shapes {shapes}; "
                           f"its first element should be the output of shape {expected}")
    raise RuntimeError(f"{where} returned {type(result).__name__}, expected a tensor of shape {expected} "
                       "or a tuple starting with one")


def _out_shape(q: torch.Tensor, v: torch.Tensor) -> tuple[int, ...]:
    return (*q.shape[:-1], v.shape[-1])  # (B, S_q, H, D_v)


# -- implementations (plain functions, also called directly by tests with a stand-in FA3 module) -----------
def fa3_fp8_impl(q, k, v, softmax_scale=None, scaled=False, *, module=None) -> torch.Tensor:
    """Body of the CUDA kernel of fluxperf::fa3_fp8. `module` defaults to the probed FA3 module."""
    module = module or fa3_module()
    scaling = "per_head" if scaled else "unscaled"
    q8, q_descale = fp8.quantize(q, scaling, FA3_FP8_DTYPE, kv_heads=k.shape[2])
    k8, k_descale = fp8.quantize(k, scaling, FA3_FP8_DTYPE)
    v8, v_descale = fp8.quantize(v, scaling, FA3_FP8_DTYPE)
    descales = (q_descale, k_descale, v_descale) if scaled else None  # unscaled: no descale keyword at all
    result = module.flash_attn_func(q8, k8, v8, **Fa3Api.of(module).kwargs(softmax_scale, descales))
    out = unpack_output(result, _out_shape(q, v), f"{module.__name__}.flash_attn_func (fp8)")
    return out.to(torch.bfloat16).contiguous()


def fa3_impl(q, k, v, softmax_scale=None, *, module=None) -> torch.Tensor:
    """Body of the CUDA kernel of fluxperf::fa3 (bf16/fp16 FA3)."""
    module = module or fa3_module()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # FA3 needs unit stride in head_dim
    result = module.flash_attn_func(q, k, v, **Fa3Api.of(module).kwargs(softmax_scale))
    out = unpack_output(result, _out_shape(q, v), f"{module.__name__}.flash_attn_func")
    return out.to(q.dtype).contiguous()


def sdpa_bshd(q, k, v, softmax_scale=None) -> torch.Tensor:
    """torch SDPA on (B, S, H, D) tensors, output (B, S, H, D) contiguous."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         scale=softmax_scale, enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2).contiguous()


# -- fluxperf::fa3_fp8 --------------------------------------------------------------------------------------
@torch.library.custom_op(FA3_FP8_OP, mutates_args=(), device_types="cuda")
def fa3_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None,
            scaled: bool = False) -> torch.Tensor:
    """FA3 on fp8 copies of q, k, v (B, S, H, D), cast inside the op; bf16 output (B, S_q, H, D_v)."""
    return fa3_fp8_impl(q, k, v, softmax_scale, scaled)


@fa3_fp8.register_kernel("cpu")
def _fa3_fp8_cpu(q, k, v, softmax_scale=None, scaled=False):
    # Reference only: quantize-dequantize with the GPU op's scaling, fp8 P, fp32 math.
    return fp8.reference_fp8_attention(q, k, v, softmax_scale, "per_head" if scaled else "unscaled",
                                       FA3_FP8_DTYPE, torch.bfloat16)


@fa3_fp8.register_fake
def _fa3_fp8_fake(q, k, v, softmax_scale=None, scaled=False):
    return q.new_empty(_out_shape(q, v), dtype=torch.bfloat16)


# -- fluxperf::fa3 (bf16) -----------------------------------------------------------------------------------
@torch.library.custom_op(FA3_OP, mutates_args=(), device_types="cuda")
def fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None) -> torch.Tensor:
    """FA3 on q, k, v (B, S, H, D) bf16/fp16; output (B, S_q, H, D_v) in q's dtype."""
    return fa3_impl(q, k, v, softmax_scale)


@fa3.register_kernel("cpu")
def _fa3_cpu(q, k, v, softmax_scale=None):
    # Reference only: SDPA in fp32, rounded to the input dtype.
    return sdpa_bshd(q.float(), k.float(), v.float(), softmax_scale).to(q.dtype)


@fa3.register_fake
def _fa3_fake(q, k, v, softmax_scale=None):
    return q.new_empty(_out_shape(q, v))
