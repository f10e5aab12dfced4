"""apply(pipe, recipe) -> AppliedStack: run the recipe's steps in one documented order and report what happened.

Stage order (each stage runs iff its own recipe option asks for it; `plan(recipe)` lists them):

    1. dtype              cast every component (always runs)
    2. fuse_qkv           fuse Q/K/V (transformer + VAE), drop the dead unfused projections
    3. channels_last      VAE in channels_last
    4. attention          install the attention backend's processor (before compile: the op must be traced)
    5. quantize           torchao float8 / int8 (after fusion: the fused Linear gets quantized; before compile)
    6. cache_dit          cache-dit DBCache hooks (before compile)
    7. first_block_cache  diffusers first-block cache, or TeaCache (fluxperf.steps.caching.teacache) (before compile)
    7b. parallel          context parallelism of the transformer (diffusers enable_parallelism; one process per GPU
                          from fluxperf.parallel_launch; before compile: the compiled blocks trace the collectives)
    8. compile            torch.compile, inductor flags as compile options (scoped, never global)
    9. export             torch.export + AOTInductor packages under CUDA graphs (instead of compile)

A stage that cannot do its job raises (UnavailableError / RecipeError); nothing prints and carries on.

The stages themselves, with how each is undone or why it cannot be, live in fluxperf.stages (STAGES).

Undo: apply() keeps its AppliedStack on the pipeline (`applied(pipe)`) and refuses a second apply() on top of it;
`remove(pipe)` undoes the applied stages in reverse order and clears it. fuse_qkv, quantize and a narrowing dtype
cast cannot be undone: remove() then refuses (NotUndoableError, nothing changed) unless partial=True, which undoes
the others and keeps those on the pipeline (apply() keeps refusing it: build a fresh pipeline).

Example:
    >>> from fluxperf.model.build import build_pipeline          # doctest: +SKIP
    >>> stack = apply(build_pipeline("schnell", "tiny"), rung("fused_qkv"))  # doctest: +SKIP
    >>> stack.qkv_fused                                     # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fluxperf.errors import FluxperfError, RecipeError
from fluxperf.ladder import recipe_from
from fluxperf.recipe import Recipe
from fluxperf.stages import STAGE, STAGES, Context, Stage

__all__ = ["APPLIED_ATTR", "STAGES", "AppliedStack", "NotUndoableError", "Removal", "Stage", "StepReport", "applied",
           "apply", "plan", "remove"]


APPLIED_ATTR = "_fluxperf_applied"  # the pipeline's AppliedStack while apply()'s stages are on it


class NotUndoableError(FluxperfError, RuntimeError):
    """remove() was asked to undo a stage that cannot be undone (fused QKV, float8, a narrowing dtype cast)."""


@dataclass
class StepReport:
    name: str
    details: dict[str, Any] = field(default_factory=dict)
    memo: Any = field(default=None, repr=False, compare=False)  # what the stage's undo needs; never reported


@dataclass
class AppliedStack:
    """What apply() actually did, stage by stage."""

    recipe: Recipe
    variant: str
    steps: list[StepReport] = field(default_factory=list)
    compile_watch: Any = None  # fluxperf.steps.compile_watch.CompileWatch of the compile stage (live recompile counts)

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
    def quantized_linear_count(self) -> int:
        """Linear layers torchao quantized (float8 or int8: `quantize_kind` says which)."""
        q = self.step("quantize")
        return q.get("quantized_count", q.get("float8_count", 0)) if q else 0

    @property
    def quantize_kind(self) -> str:
        q = self.step("quantize")
        return q.get("kind", "float8") if q else "none"

    @property
    def parallel(self) -> dict[str, Any] | None:
        """The context-parallel step's report (world size, degrees, backend), or None on one GPU."""
        return self.step("parallel")

    @property
    def world_size(self) -> int:
        return int((self.parallel or {}).get("world_size", 1))

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
            "quantize_kind": self.quantize_kind, "quantized_linear_count": self.quantized_linear_count,
            "world_size": self.world_size,
            "attention_backend": self.attention_backend, "inductor_flags": self.inductor_flags,
            "recompiles": self.recompiles,
            "steps": {s.name: _jsonable(s.details) for s in self.steps},
        }


@dataclass(frozen=True)
class Removal:
    """What remove() did: `undone` stages in the order undone (the reverse of apply's); `kept` the stages left on
    the pipeline (partial=True only), each with why it cannot be undone."""

    undone: tuple[str, ...]
    kept: dict[str, str]


def plan(recipe: Recipe) -> list[str]:
    """Names of the stages apply() will run for `recipe`, in order."""
    return [s.name for s in STAGES if s.wanted(recipe)]


def apply(pipe, recipe, *, spec=None, num_inference_steps: int | None = None, variant: str | None = None
          ) -> AppliedStack:
    """Apply a recipe to a FLUX pipeline in place.

    Args:
        pipe: a FluxPipeline / FluxKontextPipeline (already on its device).
        recipe: a Recipe, a rung name or a dict (see fluxperf.ladder.recipe_from).
        spec: fluxperf.model.shapes.ShapeSpec of the calls to come; required by export (package shapes).
        num_inference_steps: steps of the calls to come; required by cache-dit.
        variant: "schnell" / "dev" / "kontext"; inferred from the pipeline when None.
    Returns:
        AppliedStack: per-stage report (backend chosen, float8 Linear count, QKV fused, flags, compile mode...),
        also kept on the pipeline (`applied(pipe)`) until remove(pipe).
    Raises:
        RecipeError: the pipeline already carries an applied stack (remove(pipe) first, or a fresh pipeline), or a
            stage refuses; UnavailableError: a stage's package or hardware is missing. A stage that raises leaves
            the stages before it on the pipeline and in `applied(pipe)`, so remove(pipe) can undo them.
    """
    from fluxperf.model.build import variant_of

    recipe = recipe_from(recipe)
    _refuse_reapply(pipe)
    ctx = Context(pipe=pipe, recipe=recipe, spec=spec, steps=num_inference_steps,
                  variant=variant or variant_of(pipe))
    stack = AppliedStack(recipe=recipe, variant=ctx.variant)
    setattr(pipe, APPLIED_ATTR, stack)  # before the stages: a stage that raises leaves the earlier ones removable
    for stage in STAGES:
        if stage.wanted(recipe):
            ctx.memo = None
            details = stage.run(ctx)
            stack.steps.append(StepReport(stage.name, details, memo=ctx.memo))
    stack.compile_watch = ctx.compile_watch
    return stack


def applied(pipe) -> AppliedStack | None:
    """The AppliedStack apply() left on `pipe` (its stages are on the pipeline now), or None."""
    return getattr(pipe, APPLIED_ATTR, None)


def remove(pipe, *, partial: bool = False) -> Removal | None:
    """Undo apply(): the applied stages in reverse order, then forget the stack.

    A pipeline without an applied stack (never applied, or already removed) is left as it is and gives None, so a
    `finally: remove(pipe)` never hides the error that stopped apply().

    Args:
        pipe: a pipeline apply() ran on.
        partial: False: refuse when a stage cannot be undone (nothing changes). True: undo the stages that can be,
            keep the others on the pipeline (apply() keeps refusing it) and list them in Removal.kept.
    Returns:
        Removal (undone and kept stages), or None when nothing was applied.
    Raises:
        NotUndoableError: partial=False and a stage cannot be undone (fuse_qkv, quantize, a narrowing dtype cast):
            it names each with the reason and the fix.
    Example:
        >>> remove(pipe).undone  # doctest: +SKIP
        ('cache_dit', 'dtype')
    """
    stack = applied(pipe)
    if stack is None:
        return None
    kept = _not_undoable(stack)
    if kept and not partial:
        raise NotUndoableError(
            f"remove(): the recipe {stack.recipe.name!r} applied stages that cannot be undone: {_reasons(kept)}. "
            "Nothing was changed. Fix: build a fresh pipeline, or remove(pipe, partial=True) to undo the other "
            f"stages ({', '.join(s.name for s in stack.steps if s.name not in kept) or 'none'}) and keep these."
        )
    left, undone = list(stack.steps), []
    try:
        for step in reversed(stack.steps):
            if step.name not in kept:
                STAGE[step.name].undo(pipe, step.memo)
                left.remove(step)
                undone.append(step.name)
    finally:  # an undo that raised leaves its stage (and the ones before it) recorded on the pipeline
        if left:
            setattr(pipe, APPLIED_ATTR, AppliedStack(recipe=stack.recipe, variant=stack.variant, steps=left))
        else:
            delattr(pipe, APPLIED_ATTR)
    return Removal(undone=tuple(undone), kept=kept)


def _not_undoable(stack: AppliedStack) -> dict[str, str]:
    out = {}
    for step in stack.steps:
        why = STAGE[step.name].why_not_undoable(step.memo)
        if why:
            out[step.name] = why
    return out


def _reasons(kept: dict[str, str]) -> str:
    return "; ".join(f"{name} ({why})" for name, why in kept.items())


def _refuse_reapply(pipe) -> None:
    stack = applied(pipe)
    if stack is None:
        return
    kept = _not_undoable(stack)
    if kept and len(kept) == len(stack.steps):
        raise RecipeError(
            f"apply(): this pipeline still carries stages of the recipe {stack.recipe.name!r} that cannot be undone: "
            f"{_reasons(kept)}. Fix: build a fresh pipeline."
        )
    raise RecipeError(
        f"apply(): this pipeline already carries the recipe {stack.recipe.name!r} (stages {stack.stage_names}); a "
        "second recipe on top would stack steps in an order apply() never checks. Fix: fluxperf.remove(pipe) first "
        "(stages that cannot be undone: build a fresh pipeline), or apply one recipe that has both."
    )


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
