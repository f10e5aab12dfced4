"""An attention processor for diffusers' FluxAttention that calls the selected backend's kernel directly.

Same steps as diffusers 0.42's FluxAttnProcessor (projections, fused or not; RMSNorm on q/k; text+image concat;
rotary embedding), then one attention call on (batch, seq, heads, head_dim) tensors:

  * sdpa:   F.scaled_dot_product_attention, torch picks the kernel (the same calls as diffusers' "native" backend,
            so its output equals the stock processor's bit for bit).
  * cudnn / flash: the same SDPA call inside `torch.nn.attention.sdpa_kernel(<that one backend>)`.
  * fa3 / fa3_fp8 / aiter_fp8: torch.ops.fluxperf.{fa3, fa3_fp8, aiter_fp8} (custom ops; one opaque node under
    torch.compile; the fp8 cast happens inside the op).

It does NOT check whether the backend can run: `fluxperf.steps.attention.apply_attention` does that (registry) before
installing it. Constructing one directly (tests, experiments) skips the checks.

Example:
    >>> proc = FluxperfAttnProcessor("sdpa")                      # doctest: +SKIP
    >>> pipe.transformer.set_attn_processor(proc)                 # doctest: +SKIP
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections

from fluxperf.recipe import AttentionBackendName

_B = AttentionBackendName


# -- kernels: (q, k, v, attn_mask) in (B, S, H, D) -> (B, S, H, D) ---------------------------------------------
def sdpa_attention(q, k, v, attn_mask=None):
    """SDPA on BSHD tensors, exactly as diffusers' native backend calls it (2-D masks reshaped to (B, 1, 1, S_k))."""
    if attn_mask is not None and attn_mask.ndim == 2 and attn_mask.shape[0] == q.shape[0] \
            and attn_mask.shape[1] == k.shape[1]:
        attn_mask = attn_mask.unsqueeze(1).unsqueeze(1)
    q, k, v = (x.permute(0, 2, 1, 3) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=False)
    return out.permute(0, 2, 1, 3)


def restricted_sdpa_attention(q, k, v, attn_mask=None, *, backends=()):
    """SDPA limited to `backends` (torch.nn.attention.SDPBackend members); traceable by torch.compile."""
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(list(backends)):
        return sdpa_attention(q, k, v, attn_mask)


def _no_mask(name: str, attn_mask) -> None:
    if attn_mask is not None:
        raise ValueError(f"attention backend {name!r} takes no attention mask (got one of shape "
                         f"{tuple(attn_mask.shape)}). Fix: use attention.backend='sdpa' for masked attention.")


def fa3_attention(q, k, v, attn_mask=None):
    _no_mask("fa3", attn_mask)
    return torch.ops.fluxperf.fa3(q, k, v, None)


def fa3_fp8_attention(q, k, v, attn_mask=None, *, scaled=False):
    _no_mask("fa3_fp8", attn_mask)
    return torch.ops.fluxperf.fa3_fp8(q, k, v, None, scaled)


def aiter_fp8_attention(q, k, v, attn_mask=None, *, scaled=False):
    _no_mask("aiter_fp8", attn_mask)
    return torch.ops.fluxperf.aiter_fp8(q, k, v, None, scaled)


def make_kernel(backend: str, fp8_scaling: str = "unscaled"):
    """(attention callable, torch op name or None, fp8 scaling actually used) for a backend name.

    Args:
        backend: an AttentionBackendName value.
        fp8_scaling: "unscaled" or "per_head" (fp8 backends; aiter's kernel only takes per-tensor descales, so
            "per_head" becomes "per_tensor" there). Ignored by the others, which report "none".
    """
    from torch.nn.attention import SDPBackend

    if fp8_scaling not in ("unscaled", "per_head"):
        raise ValueError(f"fp8_scaling={fp8_scaling!r} is not allowed. Fix: use 'unscaled' or 'per_head'.")
    scaled = fp8_scaling != "unscaled"
    if backend == _B.SDPA.value:
        return sdpa_attention, None, "none"
    if backend == _B.CUDNN.value:
        return functools.partial(restricted_sdpa_attention, backends=(SDPBackend.CUDNN_ATTENTION,)), None, "none"
    if backend == _B.FLASH.value:
        return functools.partial(restricted_sdpa_attention, backends=(SDPBackend.FLASH_ATTENTION,)), None, "none"
    if backend == _B.FA3.value:
        from fluxperf.steps.attention import ops  # noqa: F401  (registers the ops)

        return fa3_attention, ops.FA3_OP, "none"
    if backend == _B.FA3_FP8.value:
        from fluxperf.steps.attention import ops

        return functools.partial(fa3_fp8_attention, scaled=scaled), ops.FA3_FP8_OP, fp8_scaling
    if backend == _B.AITER_FP8.value:
        from fluxperf.steps.attention import aiter_ops

        return (functools.partial(aiter_fp8_attention, scaled=scaled), aiter_ops.AITER_FP8_OP,
                "per_tensor" if scaled else "unscaled")
    raise ValueError(f"attention backend {backend!r} is not known. Fix: use one of {list(_B.values())}.")


class FluxperfAttnProcessor:
    """FluxAttention processor dispatching to one attention backend (see the module docstring).

    Args:
        backend: an AttentionBackendName value.
        fp8_scaling: "unscaled" or "per_head" (fp8 backends only).

    Attributes: backend, op (torch op name or None), fp8_scaling (what the kernel really does).
    """

    # diffusers sets these on processors (set_attention_backend); this processor ignores them.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, backend: str = "sdpa", fp8_scaling: str = "unscaled"):
        self.backend = backend
        self.attend, self.op, self.fp8_scaling = make_kernel(backend, fp8_scaling)

    def __repr__(self) -> str:
        return f"FluxperfAttnProcessor(backend={self.backend!r}, op={self.op!r}, fp8_scaling={self.fp8_scaling!r})"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        q, k, v, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)  # fused or not
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))  # (B, S_img, H, D)
        q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.added_kv_proj_dim is not None:  # double-stream block: prepend the text tokens
            eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], dim=1), torch.cat([ek, k], dim=1), torch.cat([ev, v], dim=1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        out = self.attend(q, k, v, attention_mask)  # (B, S, H, D)
        out = out.flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:
            return out
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]],
                                           dim=1)
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        return image, attn.to_add_out(text.contiguous())
