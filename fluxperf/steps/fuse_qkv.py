"""Fused Q/K/V projections (the `fuse_qkv` stage of fluxperf.apply): check, fuse, drop the dead projections.

diffusers' `fuse_qkv_projections()` concatenates to_q/to_k/to_v (and the added-context projections) into one
Linear per attention module but keeps the originals; fluxperf deletes them so they are neither quantized nor kept
in memory. That deletion is why this stage cannot be undone (IRREVERSIBLE): there is nothing left to unfuse into.

Example:
    >>> fuse_qkv(build_pipeline("schnell", "tiny"))["fused_attention_modules"]  # doctest: +SKIP
    3
"""

from __future__ import annotations

from fluxperf.errors import RecipeError

IRREVERSIBLE = ("the unfused to_q/to_k/to_v (and add_*_proj) projections were deleted after fusing to free their "
                "memory (~2.7 GB at full size in bf16), so nothing is left to unfuse into")


def fuse_qkv(pipe) -> dict:
    """Fuse Q/K/V of the transformer and the VAE in place and drop the transformer's dead unfused projections.

    Returns:
        {"fused_attention_modules", "dead_projections_removed", "merged_lora_projections", "vae_processors"}.
    Raises:
        RecipeError: a projection carries more than weight and bias (see _check_fusable), or nothing was fused.
    """
    transformer, vae = pipe.transformer, pipe.vae
    merged = _check_fusable(transformer, "transformer") + _check_fusable(vae, "vae")  # before anything changes
    transformer.fuse_qkv_projections()
    vae.fuse_qkv_projections()
    removed = _drop_unfused_projections(transformer)
    fused = sum(1 for m in transformer.modules() if getattr(m, "fused_projections", False))
    if fused == 0:
        raise RecipeError("fuse_qkv=True but no attention module of the transformer reports fused projections.")
    return {"fused_attention_modules": fused, "dead_projections_removed": removed,
            "merged_lora_projections": merged,
            "vae_processors": sorted({type(p).__name__ for p in vae.attn_processors.values()})}


_PROJECTIONS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")


def _check_fusable(model, label: str) -> int:
    """Refuse projections whose output is more than `x @ weight.T + bias`: diffusers' fuse_projections copies
    only `.weight`/`.bias`, so an unmerged PEFT LoRA adapter, a forward hook or a Linear subclass would be
    silently dropped from the fused projection.

    Returns:
        how many projections are PEFT layers whose active adapters are all merged (pipe.fuse_lora()): their
        `.weight` holds the LoRA delta, so fusing keeps it.
    Raises:
        RecipeError: naming the first offending projections, what they carry, and the fix.
    """
    import torch

    merged, bad = 0, []
    for name, module in model.named_modules():
        if not callable(getattr(module, "fuse_projections", None)) or getattr(module, "fused_projections", False):
            continue
        for child in _PROJECTIONS:
            proj = getattr(module, child, None)
            if proj is None:
                continue
            path = f"{label}.{name}.{child}"
            base = getattr(proj, "base_layer", None)  # a PEFT tuner layer wraps the original Linear
            if base is not None:
                unmerged = sorted(set(proj.active_adapters) - set(getattr(proj, "merged_adapters", ())))
                if unmerged:
                    bad.append(f"{path} carries the unmerged LoRA adapter(s) {unmerged}")
                    continue
                merged += 1
                proj = base
            if type(proj) is not torch.nn.Linear:
                bad.append(f"{path} is a {type(proj).__module__}.{type(proj).__qualname__}, not a torch.nn.Linear")
            elif proj._forward_hooks or proj._forward_pre_hooks or getattr(getattr(proj, "_diffusers_hook", None),
                                                                           "hooks", None):
                bad.append(f"{path} has forward hooks")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise RecipeError(
            f"fuse_qkv=True but {'; '.join(bad[:3])}{more}: fusing Q/K/V copies only the projections' base "
            "weights, so the fused model would silently drop what they add. Fix: merge a LoRA into the base weights "
            "first (pipe.fuse_lora(), then pipe.unload_lora_weights() if you like), remove the hooks, or apply "
            "without fuse_qkv."
        )
    return merged


def _drop_unfused_projections(transformer) -> int:
    """diffusers keeps to_q/to_k/to_v after fusing (API-NOTES §1f): drop them so they are neither quantized
    nor kept in memory (~2.7 GB at full size in bf16)."""
    removed = 0
    for module in transformer.modules():
        if not getattr(module, "fused_projections", False):
            continue
        names = ["to_q", "to_k", "to_v"]
        if hasattr(module, "to_added_qkv"):
            names += ["add_q_proj", "add_k_proj", "add_v_proj"]
        for name in names:
            if hasattr(module, name):
                delattr(module, name)
                removed += 1
    return removed
