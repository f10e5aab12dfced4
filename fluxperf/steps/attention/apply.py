"""`apply_attention`: check the requested backend against the transformer, install the processor, report.

The check runs against the transformer's device (or the `device` argument, for checking before the model is moved
to the GPU), its dtype and its head_dim. A backend that cannot run raises UnavailableError (backend name, reason,
install hint), unless `AttentionConfig.fallback == "sdpa"`: then SDPA is installed and the report records the
fallback and its reason.
"""

from __future__ import annotations

from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.recipe import AttentionConfig
from fluxperf.steps.attention import registry


def flux_attention_modules(transformer) -> list:
    """Every diffusers FluxAttention module of `transformer` (57 in FLUX.1, 3 in the tiny model)."""
    from diffusers.models.transformers.transformer_flux import FluxAttention

    return [m for m in transformer.modules() if isinstance(m, FluxAttention)]


def apply_attention(transformer, cfg: AttentionConfig, *, device=None) -> dict:
    """Install fluxperf's attention processor for `cfg.backend` on every FluxAttention module of `transformer`.

    Args:
        transformer: a diffusers FluxTransformer2DModel (fused QKV or not).
        cfg: the recipe's AttentionConfig (backend, fp8_scaling, fallback).
        device: device to check against instead of the transformer's (e.g. "cuda" before `.to("cuda")`).

    Returns:
        report dict: requested, backend (actually used), fallback_reason (str or None), fp8_scaling (what the
        kernel does: "unscaled", "per_head", "per_tensor" or "none"), processors (modules set), op (torch op
        name or None), device, dtype, head_dim, fa3_module (FA3 module name for fa3 backends, else None),
        fa3_build (its distribution and version, e.g. "fa3-fwd 0.0.3", else None).

    Raises:
        UnavailableError: the backend cannot run here (device, dtype, package, or an FA3 build whose
            flash_attn_func does not take what the mode needs), unless cfg.fallback == "sdpa".

    Example:
        >>> report = apply_attention(pipe.transformer, AttentionConfig("fa3_fp8", fallback="sdpa"))  # doctest: +SKIP
        >>> report["backend"], report["fallback_reason"]                                            # doctest: +SKIP
        ('sdpa', "device 'cpu': fa3_fp8 runs on CUDA GPUs only")
    """
    from fluxperf.steps.attention.processor import FluxperfAttnProcessor

    if not isinstance(cfg, AttentionConfig):
        raise RecipeError(f"apply_attention needs a fluxperf.recipe.AttentionConfig, got {type(cfg).__name__}: "
                          f"{cfg!r}. Fix: pass recipe.attention.")
    cfg.validate()
    modules = flux_attention_modules(transformer)
    if not modules:
        raise UnavailableError("FluxAttention modules", f"{type(transformer).__name__} has none",
                               "pass a diffusers FluxTransformer2DModel (pipe.transformer)")
    param = next(transformer.parameters())
    target = registry.target_for(device if device is not None else param.device, param.dtype, modules[0].head_dim)
    backend, fallback_reason = cfg.backend, registry.check(cfg.backend, target)
    if fallback_reason is None and registry.spec(cfg.backend).package == "fa3":
        fallback_reason = _fa3_api_reason(cfg)
    if fallback_reason is not None:
        if cfg.fallback != "sdpa":
            raise registry.unavailable(cfg.backend, fallback_reason)
        backend = "sdpa"
    processor = FluxperfAttnProcessor(backend, cfg.fp8_scaling if backend == cfg.backend else "unscaled")
    for module in modules:
        module.set_processor(processor)
    fa3_module = fa3_build = None
    if registry.spec(backend).package == "fa3":
        from fluxperf.steps.attention.fa3_api import build_of
        from fluxperf.steps.attention.ops import fa3_module as imported_fa3

        fa3_module = imported_fa3().__name__  # the module the kernels call
        fa3_build = build_of(fa3_module)
    return {
        "requested": cfg.backend,
        "backend": backend,
        "fallback_reason": fallback_reason,
        "fp8_scaling": processor.fp8_scaling,
        "processors": len(modules),
        "op": processor.op,
        "device": target.device_type,
        "dtype": target.dtype,
        "head_dim": target.head_dim,
        "fa3_module": fa3_module,
        "fa3_build": fa3_build,
    }


def _fa3_api_reason(cfg: AttentionConfig) -> str | None:
    """Why the installed FA3 build's flash_attn_func cannot be called as this config needs (None: it can); its
    signature is inspected once (fluxperf.steps.attention.fa3_api), so API drift is refused here, not at the first forward."""
    from fluxperf.steps.attention.fa3_api import Fa3Api
    from fluxperf.steps.attention.ops import fa3_module

    scaled = cfg.backend == "fa3_fp8" and cfg.fp8_scaling == "per_head"
    return Fa3Api.of(fa3_module()).reason(scaled)


def reset_attention(transformer) -> int:
    """Put diffusers' stock FluxAttnProcessor back on every FluxAttention module; returns how many."""
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    modules = flux_attention_modules(transformer)
    for module in modules:
        module.set_processor(FluxAttnProcessor())
    return len(modules)
