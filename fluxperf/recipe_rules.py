"""Cross-step rules of a Recipe: combinations of individually valid settings that cannot work together.

Each rule takes a Recipe and raises `RecipeError` naming the combination, why it cannot work and the fix;
`Recipe.validate()` runs them all (after the per-field checks of fluxperf.recipe_checks) in COMBINATION_RULES order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import RecipeError
from .recipe import FP8_BACKENDS

if TYPE_CHECKING:
    from .recipe import Recipe


def _rule_flags_need_compiler(r: Recipe) -> None:
    if r.inductor_flags.enabled and not (r.compile.enabled or r.export.enabled):
        raise RecipeError(
            "inductor_flags.enabled=True with compile.enabled=False and export.enabled=False: the flags only change "
            "code that Inductor generates. Fix: enable compile (or export), or disable inductor_flags."
        )


def _rule_export_replaces_compile(r: Recipe) -> None:
    if r.export.enabled and r.compile.enabled:
        raise RecipeError(
            "export.enabled=True with compile.enabled=True: export builds AOTInductor packages, which replace "
            "torch.compile. Fix: set compile.enabled=False (the export rung does)."
        )


def _rule_export_no_caching(r: Recipe) -> None:
    for name, cfg in (("cache_dit", r.cache_dit), ("first_block_cache", r.first_block_cache)):
        if r.export.enabled and cfg.enabled:
            raise RecipeError(
                f"export.enabled=True with {name}.enabled=True: caching decides per step in Python whether to run "
                "the blocks, but an exported AOTInductor package is one opaque graph with no place for that decision. "
                f"Fix: use compile instead of export, or disable {name}."
            )


def _rule_one_cache(r: Recipe) -> None:
    if r.cache_dit.enabled and r.first_block_cache.enabled:
        raise RecipeError(
            "cache_dit.enabled=True with first_block_cache.enabled=True: both cache the transformer's blocks and "
            "would fight over them. Fix: enable only one."
        )


def _rule_cache_no_cudagraphs(r: Recipe) -> None:
    caching = r.cache_dit.enabled or r.first_block_cache.enabled
    if caching and r.compile.enabled and r.compile.mode in ("reduce-overhead", "max-autotune"):
        raise RecipeError(
            f"compile.mode={r.compile.mode!r} (CUDA graphs) with block caching: the cache runs Python between blocks, "
            "which CUDA graphs cannot capture. Fix: compile.mode=None or 'max-autotune-no-cudagraphs'."
        )


def _rule_low_precision_needs_half(r: Recipe) -> None:
    if r.quantize.enabled and r.dtype != "bfloat16":
        raise RecipeError(
            f"quantize.kind={r.quantize.kind!r} with dtype={r.dtype!r}: torchao float8 dynamic quantization is "
            "applied to bf16 models (PerRow requires bf16 weights). Fix: dtype='bfloat16'."
        )
    if r.attention.backend in ("fa3", *FP8_BACKENDS) and r.dtype == "float32":
        raise RecipeError(
            f"attention.backend={r.attention.backend!r} with dtype='float32': FlashAttention-3 takes bf16/fp16 "
            "(or fp8) inputs. Fix: dtype='bfloat16' or attention.backend='sdpa'."
        )


COMBINATION_RULES = (
    _rule_flags_need_compiler,
    _rule_export_replaces_compile,
    _rule_export_no_caching,
    _rule_one_cache,
    _rule_cache_no_cudagraphs,
    _rule_low_precision_needs_half,
)
