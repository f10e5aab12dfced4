"""Test-only slowdown injection, for demonstrating that the regression check fires.

With FLUXPERF_INJECT_SLOWDOWN=0.05 set, the perf fixtures call `install_slowdown` on the transformer before
optimizing it: a forward hook on each of the 57 blocks multiplies the block's image hidden states
(B, S_img, D), the second output of both block kinds, by an extra (D, m) bf16 matrix, with m chosen so the extra matmuls add `fraction` of the block's
FLOPs (linear + attention). The extra result feeds the output through a 1e-30-scaled mean (so no compiler
can drop it, and the values do not change in bf16). The realized slowdown is *about* the fraction: the extra
GEMM runs at a somewhat different efficiency than the step (the comparison report shows the real change).
Never active unless the variable is set.

Example:
    >>> slowdown_fraction({"FLUXPERF_INJECT_SLOWDOWN": "0.05"})
    0.05
    >>> slowdown_fraction({}) is None
    True
"""

from __future__ import annotations

import math
import os

ENV = "FLUXPERF_INJECT_SLOWDOWN"


def slowdown_fraction(environ=None) -> float | None:
    """The requested slowdown fraction, or None when the variable is unset/empty."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not value:
        return None
    try:
        fraction = float(value)
    except ValueError:
        fraction = float("nan")
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"{ENV}={value!r} must be a fraction in (0, 1], e.g. 0.05 for ~5% slower. Fix: set e.g. "
                         f"{ENV}=0.05 or unset it.")
    return fraction


def extra_width(fraction: float, *, d: int, image_tokens: int, text_tokens: int) -> int:
    """Columns m of the extra (D, m) matrix so that 2*S_img*D*m = fraction * (block linear + attention FLOPs)."""
    s = image_tokens + text_tokens
    block_flops = 24 * d * d * s + 4 * s * s * d  # see fluxperf.bench.flops
    return max(1, round(fraction * block_flops / (2 * image_tokens * d)))


def install_slowdown(transformer, fraction: float, spec) -> list:
    """Hook every transformer block to do ~`fraction` extra work; returns the hook handles (call .remove()).

    Args:
        transformer: a diffusers FluxTransformer2DModel (bf16, on its device), before compile/export.
        fraction: e.g. 0.05.
        spec: the ShapeSpec of the calls (token counts size the extra matmul).
    """
    import torch

    cfg = transformer.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    m = extra_width(fraction, d=d, image_tokens=spec.image_tokens, text_tokens=spec.text_tokens)
    device = next(transformer.parameters()).device
    gen = torch.Generator(device=device).manual_seed(1234)
    weight = torch.randn(d, m, device=device, dtype=torch.bfloat16, generator=gen) * d**-0.5

    def bump(t):
        extra = t.to(torch.bfloat16) @ weight  # (B, S_img, m): the injected work
        return (extra.float().mean() * 1e-30).to(t.dtype)

    def hook(module, args, output):
        # both FLUX block kinds return (encoder_hidden_states, hidden_states); the image stream is second
        if isinstance(output, tuple):
            encoder_hidden_states, hidden_states = output
            return encoder_hidden_states, hidden_states + bump(hidden_states)
        return output + bump(output)

    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    return [block.register_forward_hook(hook) for block in blocks]
