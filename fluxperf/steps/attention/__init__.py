"""Attention backends for FLUX: a registry, fp8/bf16 FlashAttention-3 and aiter custom ops, and a FluxAttention processor.

Importing this package is light: it imports neither torch, diffusers, FA3, aiter nor torchao, and does not touch
CUDA. The custom ops (`torch.ops.fluxperf.fa3`, `.fa3_fp8`, `.aiter_fp8`) are registered lazily, on first access to
an op callable below, on `register_ops()`, or when `apply_attention` installs a backend that uses them.

Public API:
    apply_attention(transformer, cfg, *, device=None) -> dict   install the processor, return the report
    reset_attention(transformer) -> int                          back to diffusers' FluxAttnProcessor
    available_backends(target=None) -> {name: None | reason}     what can run here (bf16, head_dim 128 by default)
    check_backend(name, target) -> None | reason                 one backend's first unmet constraint
    Target, target_for(device, dtype, head_dim, seq_len=None)    what a backend is checked against
    AttentionBackendName                                         the backend names (from fluxperf.recipe)
    register_ops()                                               register the custom ops now
    fa3, fa3_fp8, aiter_fp8                                      the op callables (lazy)
    FluxperfAttnProcessor                                        the processor class (lazy)

Example:
    >>> from fluxperf.steps.attention import available_backends
    >>> available_backends()["sdpa"] is None
    True
"""

from __future__ import annotations

from fluxperf.recipe import AttentionBackendName
from fluxperf.steps.attention.apply import apply_attention, reset_attention
from fluxperf.steps.attention.registry import Target, available_backends, target_for
from fluxperf.steps.attention.registry import check as check_backend

_LAZY = {
    "fa3": ("ops", "fa3"),
    "fa3_fp8": ("ops", "fa3_fp8"),
    "aiter_fp8": ("aiter_ops", "aiter_fp8"),
    "FluxperfAttnProcessor": ("processor", "FluxperfAttnProcessor"),
}

__all__ = ["AttentionBackendName", "Target", "apply_attention", "available_backends", "check_backend",
           "register_ops", "reset_attention", "target_for", *_LAZY]


def register_ops() -> tuple[str, ...]:
    """Register fluxperf's attention custom ops with torch (idempotent); returns their names.

    Needed before loading an exported program / AOTInductor package that calls them.
    """
    from fluxperf.steps.attention import aiter_ops, ops

    return ops.FA3_OP, ops.FA3_FP8_OP, aiter_ops.AITER_FP8_OP


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
