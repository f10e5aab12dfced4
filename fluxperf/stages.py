"""The stages of apply(), in order: when each runs, what it does, and how it is undone or why it cannot be.

    stage              runs when                         undo
    1. dtype              always                         cast back; exact after a widening cast (bf16 -> fp32) or
                                                         none, refused after a narrowing one (rounded weights)
    2. fuse_qkv           recipe.fuse_qkv                cannot: the unfused projections are deleted
    3. channels_last      recipe.channels_last           the VAE tensors it converted go back to the contiguous layout
    4. attention          attention.backend != "sdpa"    each attention module gets its previous processor back
    5. quantize           quantize.enabled               cannot: torchao replaced the Linear weights by float8 / int8 ones
    6. cache_dit          cache_dit.enabled              fluxperf.steps.caching.cache_dit.disable_cache_dit (class + transformer)
    7. first_block_cache  first_block_cache.enabled      kind "first_block": fluxperf.steps.caching.first_block.
                                                         disable_first_block_cache; "teacache": fluxperf.steps.
                                                         caching.teacache.disable_teacache
    7b. parallel          parallel.enabled               fluxperf.steps.parallel.remove_parallel (the _cp_plan hooks,
                                                         the parallel config, the attention backend it set)
    8. compile            compile.enabled                the compiled modules run eagerly again (their previous
                                                         `_compiled_call_impl`); dynamo's graphs stay in its
                                                         process-wide cache (torch._dynamo.reset() drops them)
    9. export             export.enabled                 fluxperf.steps.export.apply.remove_export

Why this order: attention before compile (the op must be traced), quantize after fusion (the fused Linear gets
quantized) and before compile, caching before compile (the hooks are traced around), export instead of compile; parallel after the
steps that change weights and processors and before compile (the compiled blocks trace the collectives).
fluxperf.apply runs them (apply) and undoes them in reverse (remove).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fluxperf.errors import RecipeError
from fluxperf.recipe import Recipe
from fluxperf.steps.fuse_qkv import IRREVERSIBLE as FUSE_IRREVERSIBLE


@dataclass
class Context:
    """What a stage's run sees: the pipeline, the recipe, the calls to come; `memo` is the stage's note for undo.

    A memo refers to modules weakly: the AppliedStack that carries it outlives the pipeline in the callers' records,
    and must not keep its weights (GPU memory) alive.
    """

    pipe: Any
    recipe: Recipe
    spec: Any
    steps: int | None
    variant: str
    compile_watch: Any = None
    memo: Any = None


def _never_blocked(memo) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    """One step of apply().

    run(ctx) -> report dict; it may leave what its undo needs in `ctx.memo`.
    undo(pipe, memo): puts back what run changed. None when the stage can never be undone; `irreversible` says why.
    blocked(memo) -> reason or None: why this particular run cannot be undone (dtype: only widening casts can).
    """

    name: str
    wanted: Callable[[Recipe], bool]
    run: Callable[[Context], dict[str, Any]]
    undo: Callable[[Any, Any], None] | None = None
    irreversible: str = ""
    blocked: Callable[[Any], str | None] = _never_blocked

    def why_not_undoable(self, memo) -> str | None:
        """None if the run that left `memo` can be undone, else the reason."""
        return self.irreversible if self.undo is None else self.blocked(memo)


# -- 1. dtype --------------------------------------------------------------------------------------------------
def _stage_dtype(ctx: Context) -> dict:
    from fluxperf.model.build import quiet_diffusers, torch_dtype

    dtype = torch_dtype(ctx.recipe.dtype)
    before = {name: _float_dtypes(m) for name, m in _modules(ctx.pipe)}
    with quiet_diffusers():
        ctx.pipe.to(dtype=dtype)
    ctx.memo = {"dtype": dtype, "before": {n: d for n, d in before.items() if d and d != {dtype}}}
    return {"dtype": ctx.recipe.dtype}


def _dtype_blocked(memo) -> str | None:
    import torch

    new, lossy = memo["dtype"], []
    for name, old in memo["before"].items():
        if len(old) > 1:
            lossy.append(f"{name} (mixed {sorted(str(d) for d in old)})")
        elif torch.promote_types(next(iter(old)), new) != new:
            lossy.append(f"{name} ({next(iter(old))})")
    if not lossy:
        return None
    return (f"the cast to {new} rounded the weights of {', '.join(lossy)}; casting back would not restore them "
            "(build the pipeline in the recipe's dtype and this stage changes nothing)")


def _undo_dtype(pipe, memo) -> None:
    from fluxperf.model.build import quiet_diffusers

    with quiet_diffusers():
        for name, old in memo["before"].items():
            getattr(pipe, name).to(dtype=next(iter(old)))


def _modules(pipe):
    import torch

    return [(n, m) for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)]


def _float_dtypes(module) -> set:
    return {t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()}


# -- 2. fuse_qkv (cannot be undone) ----------------------------------------------------------------------------
def _stage_fuse_qkv(ctx: Context) -> dict:
    from fluxperf.steps.fuse_qkv import fuse_qkv

    return fuse_qkv(ctx.pipe)


# -- 3. channels_last ----------------------------------------------------------------------------------------------
def _stage_channels_last(ctx: Context) -> dict:
    import torch

    vae = ctx.pipe.vae
    # strides, not is_contiguous(): a (C, C, 1, 1) kernel is "contiguous" in both layouts, yet its strides change
    # and with them the convolution kernel chosen (and the last bits of the image)
    before = {n: t.stride() for n, t in _tensors(vae) if t.dim() == 4}
    vae.to(memory_format=torch.channels_last)
    after = dict(_tensors(vae))
    ctx.memo = {n: s for n, s in before.items() if after[n].stride() != s}
    return {"vae": "channels_last"}


def _undo_channels_last(pipe, memo) -> None:
    import torch

    tensors = dict(_tensors(pipe.vae))
    for name, stride in memo.items():
        t = tensors[name]
        restored = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device)
        restored.copy_(t.data)
        t.data = restored


def _tensors(module):
    return [*module.named_parameters(), *module.named_buffers()]


# -- 4. attention --------------------------------------------------------------------------------------------------
def _stage_attention(ctx: Context) -> dict:
    from fluxperf.steps.attention import apply_attention
    from fluxperf.steps.attention.apply import flux_attention_modules

    ctx.memo = [(weakref.ref(m), m.processor) for m in flux_attention_modules(ctx.pipe.transformer)]
    return apply_attention(ctx.pipe.transformer, ctx.recipe.attention)


def _undo_attention(pipe, memo) -> None:
    for ref, processor in memo:
        module = ref()
        if module is not None:
            module.set_processor(processor)


# -- 5. quantize (cannot be undone) --------------------------------------------------------------------------------
def _stage_quantize(ctx: Context) -> dict:
    from fluxperf.steps.quantize import check_float8_hardware, quantize_transformer

    cfg = ctx.recipe.quantize
    if cfg.activation_scale == "static":  # calibrated here, on the call shapes
        from fluxperf.steps.float8_static import calibration_run, quantize_float8_static

        if ctx.spec is None:
            raise RecipeError(
                "quantize.activation_scale='static' but apply() got no spec: the activation scales are calibrated "
                "on forwards of the call shapes. Fix: apply(pipe, recipe, spec=ShapeSpec(variant, height, width)).")
        check_float8_hardware(next(ctx.pipe.transformer.parameters()).device)
        return quantize_float8_static(ctx.pipe.transformer, cfg,
                                      calibration_run(ctx.pipe, ctx.spec, cfg.calibration_calls))
    return quantize_transformer(ctx.pipe.transformer, cfg)


# -- 6./7. block caches ----------------------------------------------------------------------------------------------
def _stage_cache_dit(ctx: Context) -> dict:
    from fluxperf.steps.caching.cache_dit import apply_cache_dit

    return apply_cache_dit(ctx.pipe, ctx.recipe.cache_dit, variant=ctx.variant,
                           num_inference_steps=_need_steps(ctx, "cache_dit"))


def _undo_cache_dit(pipe, memo) -> None:
    from fluxperf.steps.caching.cache_dit import disable_cache_dit, is_cache_dit_enabled

    if is_cache_dit_enabled(pipe):  # fluxperf.steps.caching.stats.disable_active_cache may have turned it off already
        disable_cache_dit(pipe)


def _stage_first_block_cache(ctx: Context) -> dict:
    cfg = ctx.recipe.first_block_cache
    if cfg.kind == "teacache":  # fluxperf's own hooks (diffusers 0.42.1 ships no TeaCache)
        from fluxperf.steps.caching.teacache import apply_teacache as enable
    else:
        from fluxperf.steps.caching.first_block import apply_first_block_cache as enable
    return enable(ctx.pipe, cfg, variant=ctx.variant, num_inference_steps=_need_steps(ctx, "first_block_cache"))


def _undo_first_block_cache(pipe, memo) -> None:
    from fluxperf.steps.caching.stats import active_cache, disable_active_cache

    if active_cache(pipe) in ("first_block", "teacache"):  # as for cache_dit
        disable_active_cache(pipe)


def _need_steps(ctx: Context, what: str) -> int:
    if not ctx.steps:
        raise RecipeError(
            f"{what}.enabled=True but apply() got num_inference_steps={ctx.steps!r}: the cache schedule depends "
            "on the step count. Fix: apply(pipe, recipe, num_inference_steps=28)."
        )
    return ctx.steps


# -- 7b. parallel (context parallelism; the process group comes from fluxperf.parallel_launch) -----------------------
def _stage_parallel(ctx: Context) -> dict:
    from fluxperf.steps.parallel import apply_parallel

    report = apply_parallel(ctx.pipe.transformer, ctx.recipe.parallel, spec=ctx.spec)
    ctx.memo = {"backend_set": report["attention"] != "native"}
    return report


def _undo_parallel(pipe, memo) -> None:
    from fluxperf.steps.parallel import remove_parallel

    remove_parallel(pipe.transformer, memo["backend_set"])


# -- 8. compile ------------------------------------------------------------------------------------------------------
def _stage_compile(ctx: Context) -> dict:
    from fluxperf.steps.compile import compile_transformer, compile_vae_decoder
    from fluxperf.steps.compile_watch import CompileWatch

    cfg, flags = ctx.recipe.compile, ctx.recipe.inductor_flags.options()
    if cfg.cuda_graph:  # refused before anything is compiled
        from fluxperf.steps.compile_graph import check_cuda, install_cuda_graph

        check_cuda(ctx.pipe.transformer)
    # nn.Module.compile (and CompileWatch.guard) set `_compiled_call_impl`: remember each module's previous one
    modules = [*ctx.pipe.transformer.modules(), *(ctx.pipe.vae.decoder.modules() if cfg.vae else ())]
    before = [(m, m._compiled_call_impl) for m in modules]
    ctx.compile_watch = CompileWatch()
    try:
        report = compile_transformer(ctx.pipe.transformer, cfg, flags, watch=ctx.compile_watch)
        if cfg.vae:
            report.update(compile_vae_decoder(ctx.pipe.vae, cfg, flags, watch=ctx.compile_watch))
        if cfg.cuda_graph:  # after compile: it records the compiled call (undone with it, through the memo below)
            report["cuda_graph"] = install_cuda_graph(ctx.pipe.transformer)
    except BaseException:  # a failed stage is not in the applied stack: leave nothing of it behind
        for module, previous in before:
            module._compiled_call_impl = previous
        raise
    ctx.memo = [(weakref.ref(m), old) for m, old in before if m._compiled_call_impl is not old]
    return report


def _undo_compile(pipe, memo) -> None:
    for ref, previous in memo:
        module = ref()
        if module is not None:
            module._compiled_call_impl = previous


# -- 9. export -------------------------------------------------------------------------------------------------------
def _stage_export(ctx: Context) -> dict:
    from fluxperf.steps.export.apply import apply_export

    if ctx.spec is None:
        raise RecipeError(
            "export.enabled=True but apply() got no spec: AOTInductor packages are built for fixed shapes. "
            "Fix: apply(pipe, recipe, spec=ShapeSpec(variant, height, width, batch))."
        )
    return apply_export(ctx.pipe, ctx.recipe, ctx.spec, cache_dir=ctx.recipe.export.cache_dir)


def _undo_export(pipe, memo) -> None:
    from fluxperf.steps.export.apply import remove_export

    remove_export(pipe)


STAGES: tuple[Stage, ...] = (
    Stage("dtype", lambda r: True, _stage_dtype, _undo_dtype, blocked=_dtype_blocked),
    Stage("fuse_qkv", lambda r: r.fuse_qkv, _stage_fuse_qkv, None, irreversible=FUSE_IRREVERSIBLE),
    Stage("channels_last", lambda r: r.channels_last, _stage_channels_last, _undo_channels_last),
    Stage("attention", lambda r: r.attention.backend != "sdpa", _stage_attention, _undo_attention),
    Stage("quantize", lambda r: r.quantize.enabled, _stage_quantize, None,
          irreversible="torchao replaced the transformer's Linear weights by float8 / int8 tensors; the originals "
          "are gone"),
    Stage("cache_dit", lambda r: r.cache_dit.enabled, _stage_cache_dit, _undo_cache_dit),
    Stage("first_block_cache", lambda r: r.first_block_cache.enabled, _stage_first_block_cache,
          _undo_first_block_cache),
    Stage("parallel", lambda r: r.parallel.enabled, _stage_parallel, _undo_parallel),
    Stage("compile", lambda r: r.compile.enabled, _stage_compile, _undo_compile),
    Stage("export", lambda r: r.export.enabled, _stage_export, _undo_export),
)
STAGE: dict[str, Stage] = {s.name: s for s in STAGES}
