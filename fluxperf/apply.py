"""apply(pipe, recipe) -> AppliedStack: run the recipe's steps in one documented order and report what happened.

Stage order (each stage runs iff its own recipe option asks for it; `plan(recipe)` lists them):

    1. dtype              cast every component (always runs)
    2. fuse_qkv           fuse Q/K/V (transformer + VAE), drop the dead unfused projections
    3. channels_last      VAE in channels_last
    4. attention          install the attention backend's processor (before compile: the op must be traced)
    5. quantize           torchao float8 (after fusion: the fused Linear gets quantized; before compile)
    6. cache_dit          cache-dit DBCache hooks (before compile)
    7. first_block_cache  diffusers first-block cache / TeaCache hooks (before compile)
    8. compile            torch.compile, inductor flags as compile options (scoped, never global)
    9. export             torch.export + AOTInductor packages under CUDA graphs (instead of compile)

A stage that cannot do its job raises (UnavailableError / RecipeError); nothing prints and carries on.

Example:
    >>> from fluxperf.models import build_pipeline          # doctest: +SKIP
    >>> stack = apply(build_pipeline("schnell", "tiny"), rung("fused_qkv"))  # doctest: +SKIP
    >>> stack.qkv_fused                                     # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import RecipeError
from .ladder import recipe_from
from .recipe import Recipe


@dataclass
class StepReport:
    name: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class AppliedStack:
    """What apply() actually did, stage by stage."""

    recipe: Recipe
    variant: str
    steps: list[StepReport] = field(default_factory=list)
    compile_watch: Any = None  # fluxperf.compile_watch.CompileWatch of the compile stage (live recompile counts)

    def step(self, name: str) -> dict[str, Any] | None:
        for s in self.steps:
            if s.name == name:
                return s.details
        return None

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def qkv_fused(self) -> bool:
        return self.step("fuse_qkv") is not None

    @property
    def float8_linear_count(self) -> int:
        q = self.step("quantize")
        return q["float8_count"] if q else 0

    @property
    def attention_backend(self) -> str:
        a = self.step("attention")
        return a["backend"] if a else "sdpa"

    @property
    def compile(self) -> dict[str, Any] | None:
        return self.step("compile")

    @property
    def recompiles(self) -> dict[str, Any] | None:
        """Graphs per compiled region and recompiles NOW (they grow as calls bring new shapes); None if not compiled."""
        return self.compile_watch.as_dict() if self.compile_watch is not None else None

    @property
    def inductor_flags(self) -> dict[str, bool]:
        return self.recipe.inductor_flags.options()

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.to_dict(), "variant": self.variant, "stages": self.stage_names,
            "qkv_fused": self.qkv_fused, "float8_linear_count": self.float8_linear_count,
            "attention_backend": self.attention_backend, "inductor_flags": self.inductor_flags,
            "recompiles": self.recompiles,
            "steps": {s.name: _jsonable(s.details) for s in self.steps},
        }


@dataclass(frozen=True)
class Stage:
    name: str
    wanted: Callable[[Recipe], bool]
    run: Callable[..., dict[str, Any]]


def plan(recipe: Recipe) -> list[str]:
    """Names of the stages apply() will run for `recipe`, in order."""
    return [s.name for s in STAGES if s.wanted(recipe)]


def apply(pipe, recipe, *, spec=None, num_inference_steps: int | None = None, variant: str | None = None
          ) -> AppliedStack:
    """Apply a recipe to a FLUX pipeline in place.

    Args:
        pipe: a FluxPipeline / FluxKontextPipeline (already on its device).
        recipe: a Recipe, a rung name or a dict (see fluxperf.ladder.recipe_from).
        spec: fluxperf.shapes.ShapeSpec of the calls to come; required by export (package shapes).
        num_inference_steps: steps of the calls to come; required by cache-dit.
        variant: "schnell" / "dev" / "kontext"; inferred from the pipeline when None.
    Returns:
        AppliedStack: per-stage report (backend chosen, float8 Linear count, QKV fused, flags, compile mode...).
    """
    from .models import variant_of

    recipe = recipe_from(recipe)
    ctx = _Context(pipe=pipe, recipe=recipe, spec=spec, steps=num_inference_steps,
                   variant=variant or variant_of(pipe))
    stack = AppliedStack(recipe=recipe, variant=ctx.variant)
    for stage in STAGES:
        if stage.wanted(recipe):
            stack.steps.append(StepReport(stage.name, stage.run(ctx)))
    stack.compile_watch = ctx.compile_watch
    return stack


@dataclass
class _Context:
    pipe: Any
    recipe: Recipe
    spec: Any
    steps: int | None
    variant: str
    compile_watch: Any = None


# -- stages ----------------------------------------------------------------------------------------------
def _stage_dtype(ctx: _Context) -> dict:
    from .models import quiet_diffusers, torch_dtype

    dtype = torch_dtype(ctx.recipe.dtype)
    with quiet_diffusers():
        ctx.pipe.to(dtype=dtype)
    return {"dtype": ctx.recipe.dtype}


def _stage_fuse_qkv(ctx: _Context) -> dict:
    transformer, vae = ctx.pipe.transformer, ctx.pipe.vae
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


def _stage_channels_last(ctx: _Context) -> dict:
    import torch

    ctx.pipe.vae.to(memory_format=torch.channels_last)
    return {"vae": "channels_last"}


def _stage_attention(ctx: _Context) -> dict:
    from .attention import apply_attention

    return apply_attention(ctx.pipe.transformer, ctx.recipe.attention)


def _stage_quantize(ctx: _Context) -> dict:
    from .quantize import quantize_float8

    return quantize_float8(ctx.pipe.transformer, ctx.recipe.quantize)


def _stage_cache_dit(ctx: _Context) -> dict:
    from .cache import apply_cache_dit

    return apply_cache_dit(ctx.pipe, ctx.recipe.cache_dit, variant=ctx.variant,
                           num_inference_steps=_need_steps(ctx, "cache_dit"))


def _stage_first_block_cache(ctx: _Context) -> dict:
    from .fbcache import apply_first_block_cache

    return apply_first_block_cache(ctx.pipe, ctx.recipe.first_block_cache, variant=ctx.variant,
                                   num_inference_steps=_need_steps(ctx, "first_block_cache"))


def _stage_compile(ctx: _Context) -> dict:
    from .compile import compile_transformer, compile_vae_decoder
    from .compile_watch import CompileWatch

    cfg, flags = ctx.recipe.compile, ctx.recipe.inductor_flags.options()
    ctx.compile_watch = CompileWatch()
    report = compile_transformer(ctx.pipe.transformer, cfg, flags, watch=ctx.compile_watch)
    if cfg.vae:
        report.update(compile_vae_decoder(ctx.pipe.vae, cfg, flags, watch=ctx.compile_watch))
    return report


def _stage_export(ctx: _Context) -> dict:
    from .export import apply_export

    if ctx.spec is None:
        raise RecipeError(
            "export.enabled=True but apply() got no spec: AOTInductor packages are built for fixed shapes. "
            "Fix: apply(pipe, recipe, spec=ShapeSpec(variant, height, width, batch))."
        )
    return apply_export(ctx.pipe, ctx.recipe, ctx.spec, cache_dir=ctx.recipe.export.cache_dir)


def _need_steps(ctx: _Context, what: str) -> int:
    if not ctx.steps:
        raise RecipeError(
            f"{what}.enabled=True but apply() got num_inference_steps={ctx.steps!r}: the cache schedule depends "
            "on the step count. Fix: apply(pipe, recipe, num_inference_steps=28)."
        )
    return ctx.steps


STAGES: tuple[Stage, ...] = (
    Stage("dtype", lambda r: True, _stage_dtype),
    Stage("fuse_qkv", lambda r: r.fuse_qkv, _stage_fuse_qkv),
    Stage("channels_last", lambda r: r.channels_last, _stage_channels_last),
    Stage("attention", lambda r: r.attention.backend != "sdpa", _stage_attention),
    Stage("quantize", lambda r: r.quantize.enabled, _stage_quantize),
    Stage("cache_dit", lambda r: r.cache_dit.enabled, _stage_cache_dit),
    Stage("first_block_cache", lambda r: r.first_block_cache.enabled, _stage_first_block_cache),
    Stage("compile", lambda r: r.compile.enabled, _stage_compile),
    Stage("export", lambda r: r.export.enabled, _stage_export),
)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
