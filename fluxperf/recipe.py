"""Recipes: what to apply to a FLUX pipeline, as frozen, validated step configs.

A `Recipe` is a tree of small frozen dataclasses, one per optimization step of the flux-fast stack.
It converts to and from plain dicts (JSON/CLI friendly); `from_dict` rejects unknown keys and bad values
with a message naming the value, the rule and the fix. `Recipe.validate()` refuses incompatible
combinations (e.g. export + cache-dit) before anything touches a model.

Example:
    >>> r = Recipe.from_dict({"dtype": "bfloat16", "compile": {"enabled": True}})
    >>> r.compile.scope
    'regional'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar

from fluxperf.errors import RecipeError
from fluxperf.recipe_checks import check_fields, checked

DTYPES = ("float32", "bfloat16", "float16")
MAX_STEPS = 1000  # upper bound of step-count fields (FLUX uses 4-50)
_STEP_CAP_FIX = "use -1 (no cap) or a step count >= 0"


class AttentionBackendName(str, Enum):
    """Attention backends a recipe can select (the registry in fluxperf.steps.attention implements them)."""

    SDPA = "sdpa"  # torch SDPA, torch picks the kernel
    CUDNN = "cudnn"  # SDPA restricted to cuDNN attention
    FLASH = "flash"  # SDPA restricted to its flash kernel
    FA3 = "fa3"  # FlashAttention-3, bf16 inputs
    FA3_FP8 = "fa3_fp8"  # FlashAttention-3 on float8_e4m3fn inputs (custom op)
    AITER_FP8 = "aiter_fp8"  # AMD aiter fp8 flash attention (custom op)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


FP8_BACKENDS = (AttentionBackendName.FA3_FP8.value, AttentionBackendName.AITER_FP8.value)


class _StepConfig:
    """Base of the step configs: validated at construction (also when built directly, not through a Recipe)."""

    SECTION: ClassVar[str] = ""  # the Recipe field holding this config: the prefix of field paths in messages

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field's type and rule (fluxperf.recipe_checks); RecipeError names path, value, rule, fix."""
        check_fields(self, self.SECTION)


@dataclass(frozen=True)
class AttentionConfig(_StepConfig):
    """Attention backend for the transformer.

    Args:
        backend: one of AttentionBackendName's values.
        fp8_scaling: for fp8 backends: "unscaled" (plain cast, flux-fast's) or "per_head" (amax descales).
        fallback: None (fail if the backend cannot run) or "sdpa" (fall back, recorded in the report).
    """

    SECTION: ClassVar[str] = "attention"
    backend: str = checked("sdpa", choices=AttentionBackendName.values())
    fp8_scaling: str = checked("unscaled", choices=("unscaled", "per_head"))
    fallback: str | None = checked(None, choices=(None, "sdpa"))

    def validate(self) -> None:
        super().validate()
        if self.fp8_scaling != "unscaled" and self.backend not in FP8_BACKENDS:
            raise RecipeError(
                f"attention.fp8_scaling={self.fp8_scaling!r} only applies to fp8 backends {FP8_BACKENDS}, "
                f"but attention.backend={self.backend!r}. Fix: use backend 'fa3_fp8' or leave fp8_scaling 'unscaled'."
            )


@dataclass(frozen=True)
class QuantizeConfig(_StepConfig):
    """torchao dynamic quantization of the transformer's Linear layers (fluxperf.steps.quantize).

    Args:
        kind: "none", "float8" (float8 dynamic activation + float8 weight: sm89+ GPU, bf16) or "int8" (int8
            dynamic per-token activation + int8 weight: any device, any of the recipe dtypes).
        granularity: "tensor" (PerTensor, flux-fast's float8) or "row" (PerRow; torchao's int8 default, which the
            int8 rungs use).
        activation_scale: "dynamic" (each call takes its activations' amax: torchao's default) or "static" (float8,
            tensor-wise only: one scale per Linear, calibrated once in apply() on `calibration_calls` seeded
            forwards of the call shapes, at timesteps spread over the schedule; fluxperf.steps.float8_static).
        calibration_calls: transformer forwards that calibrate static scales (1..64).
    """

    SECTION: ClassVar[str] = "quantize"
    kind: str = checked("none", choices=("none", "float8", "int8"))
    granularity: str = checked("tensor", choices=("tensor", "row"))
    activation_scale: str = checked("dynamic", choices=("dynamic", "static"))
    calibration_calls: int = checked(4, lo=1, hi=64)

    def validate(self) -> None:
        super().validate()
        if self.activation_scale == "static" and (self.kind, self.granularity) != ("float8", "tensor"):
            raise RecipeError(
                f"quantize.activation_scale='static' with kind={self.kind!r}, granularity={self.granularity!r}: static "
                "activation scales are torchao's Float8StaticActivationFloat8WeightConfig, float8 with one tensor-wise "
                "scale per layer only. Fix: kind='float8', granularity='tensor', or activation_scale='dynamic'."
            )
        default_calls = type(self).__dataclass_fields__["calibration_calls"].default
        if self.activation_scale != "static" and self.calibration_calls != default_calls:
            raise RecipeError(
                f"quantize.calibration_calls={self.calibration_calls!r} with activation_scale="
                f"{self.activation_scale!r}: only static activation scales are calibrated. Fix: set "
                "activation_scale='static', or drop calibration_calls."
            )

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


@dataclass(frozen=True)
class InductorFlags(_StepConfig):
    """flux-fast's inductor flags. Applied only to the code fluxperf compiles (torch.compile `options=` or
    AOTInductor `inductor_configs=`) and, where a global patch is needed, as a scoped patch that is restored."""

    SECTION: ClassVar[str] = "inductor_flags"
    enabled: bool = checked(False)
    conv_1x1_as_mm: bool = checked(True)
    epilogue_fusion: bool = checked(False)
    coordinate_descent_tuning: bool = checked(True)
    coordinate_descent_check_all_directions: bool = checked(True)

    def options(self) -> dict[str, bool]:
        """The inductor config entries to set (empty when disabled)."""
        if not self.enabled:
            return {}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "enabled"}


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileConfig(_StepConfig):
    """torch.compile of the transformer (and the VAE decoder).

    Args:
        enabled: compile at all.
        scope: "regional" (compile_repeated_blocks: the 19 + 38 blocks, fast to compile) or "whole".
        mode: torch.compile mode (None = default).
        fullgraph: refuse graph breaks.
        dynamic: torch.compile's dynamic shapes.
        vae: also compile the VAE decoder.
        cuda_graph: replay each whole transformer call as one CUDA graph (fluxperf.steps.compile_graph: fluxperf's
            CudaGraphRunner around the compiled call, keyed on every input's signature, re-captured when weights
            are replaced; not Inductor's CUDA graph trees, refused in recipe_rules). CUDA only.
    """

    SECTION: ClassVar[str] = "compile"
    enabled: bool = checked(False)
    scope: str = checked("regional", choices=("regional", "whole"))
    mode: str | None = checked(None, choices=COMPILE_MODES)
    fullgraph: bool = checked(True)
    dynamic: bool = checked(False)
    vae: bool = checked(True)
    cuda_graph: bool = checked(False)


@dataclass(frozen=True)
class ExportConfig(_StepConfig):
    """torch.export + AOTInductor packages (transformer and VAE decoder), replayed under CUDA graphs.

    Args:
        enabled: export instead of torch.compile.
        cudagraphs: run the loaded packages under fluxperf's CUDA-graph wrapper.
        vae: also export the VAE decoder.
        cache_dir: where .pt2 packages are stored (None: $FLUXPERF_CACHE or ~/.cache/fluxperf/aoti).
    """

    SECTION: ClassVar[str] = "export"
    enabled: bool = checked(False)
    cudagraphs: bool = checked(True)
    vae: bool = checked(True)
    cache_dir: str | None = checked(None, nonempty=True, fix="a directory path as a string (str(path)), or None")


@dataclass(frozen=True)
class CacheDitConfig(_StepConfig):
    """cache-dit DBCache (Fn/Bn compute blocks over FLUX's 57 blocks). Not for schnell (4 steps).

    Args:
        Fn, Bn: front / back compute blocks (0-57; Fn >= 1 when enabled).
        residual_diff_threshold: relative residual change under which a step is served from the cache, in (0, 10).
        max_warmup_steps: steps always computed first.
        max_cached_steps, max_continuous_cached_steps: caps on cached steps (-1: no cap).
    """

    SECTION: ClassVar[str] = "cache_dit"
    enabled: bool = checked(False)
    Fn: int = checked(12, lo=0, hi=57)
    Bn: int = checked(12, lo=0, hi=57)
    residual_diff_threshold: float = checked(0.12, lo=0, hi=10, open_lo=True, open_hi=True,
                                             fix="use a number such as 0.08-0.24")
    max_warmup_steps: int = checked(8, lo=0, hi=MAX_STEPS)
    max_cached_steps: int = checked(-1, lo=-1, hi=MAX_STEPS, fix=_STEP_CAP_FIX)
    max_continuous_cached_steps: int = checked(-1, lo=-1, hi=MAX_STEPS, fix=_STEP_CAP_FIX)

    def validate(self) -> None:
        super().validate()
        if self.enabled and self.Fn < 1:
            raise RecipeError(f"cache_dit.Fn={self.Fn}: DBCache needs at least one front compute block. Fix: Fn >= 1.")


@dataclass(frozen=True)
class FirstBlockCacheConfig(_StepConfig):
    """A block cache that decides per step from the first block: diffusers' first-block cache (kind="first_block":
    fluxperf.steps.caching.first_block; threshold: relative change of the first block's residual, e.g. 0.15-0.4) or
    TeaCache (kind="teacache": fluxperf.steps.caching.teacache; threshold: the accumulated rescaled relative L1
    change of the first block's modulated input, published 0.25 / 0.4 / 0.6 / 0.8 for ~1.5x / 1.8x / 2.0x / 2.25x).
    Threshold in (0, 5)."""

    SECTION: ClassVar[str] = "first_block_cache"
    enabled: bool = checked(False)
    kind: str = checked("first_block", choices=("first_block", "teacache"))
    threshold: float = checked(0.2, lo=0, hi=5, open_lo=True, open_hi=True, fix="use a number such as 0.15-0.4")


# -- parallel (issue 16) --------------------------------------------------------------------------------------
# diffusers backend names under context parallelism: the diffusers processor's own dispatch (fluxperf's processors
# ignore diffusers' parallel config). "native": SDPA picks the kernel; ring needs a kernel returning the log-sum-exp.
CP_ATTENTION = {"native": "native", "flash": "_native_flash", "cudnn": "_native_cudnn"}


@dataclass(frozen=True)
class ParallelConfig(_StepConfig):
    """Context parallelism of the transformer over several GPUs (fluxperf.steps.parallel: diffusers'
    `enable_parallelism` with a `ContextParallelConfig`; one process per GPU, fluxperf.parallel_launch).

    Args:
        enabled: split each step's sequence over `ulysses_degree * ring_degree` processes.
        ulysses_degree: Ulysses (all-to-all over heads) degree, 1-8; FLUX.1's 24 heads: 2, 3, 4, 6 or 8.
        ring_degree: ring attention degree, 1-8.
        attention: the diffusers attention backend under parallelism: "native" (SDPA picks), "flash"
            (`_native_flash`) or "cudnn" (`_native_cudnn`); ring needs "flash" or "cudnn" (it merges partial
            results by their log-sum-exp, which diffusers' native backend does not return).
    """

    SECTION: ClassVar[str] = "parallel"
    enabled: bool = checked(False)
    ulysses_degree: int = checked(1, lo=1, hi=8)
    ring_degree: int = checked(1, lo=1, hi=8)
    attention: str = checked("native", choices=tuple(CP_ATTENTION))

    @property
    def world_size(self) -> int:
        """Processes (GPUs) the recipe runs on: 1 when disabled."""
        return self.ulysses_degree * self.ring_degree if self.enabled else 1

    def validate(self) -> None:
        super().validate()
        if self.enabled and self.ulysses_degree * self.ring_degree < 2:
            raise RecipeError("parallel.enabled=True with ulysses_degree=1 and ring_degree=1: nothing to split. "
                              "Fix: ulysses_degree=2 (or ring_degree=2).")
        if self.enabled and self.ring_degree > 1 and self.attention == "native":
            raise RecipeError(
                f"parallel.ring_degree={self.ring_degree} with parallel.attention='native': ring attention merges "
                "partial results by their log-sum-exp, which diffusers' native (SDPA) backend does not return. "
                "Fix: parallel.attention='cudnn' or 'flash'.")


@dataclass(frozen=True)
class Recipe:
    """Everything to apply to a pipeline. Build with the ladder (`fluxperf.ladder.rung`) or from a dict.

    Args:
        name: label used in reports.
        dtype: dtype of every pipeline component ("float32", "bfloat16", "float16").
        fuse_qkv: fuse Q/K/V projections (transformer and VAE).
        channels_last: VAE in channels_last memory format.
    """

    name: str = checked("custom", nonempty=True, fix="use a non-empty label such as 'my_recipe'")
    dtype: str = checked("bfloat16", choices=DTYPES)
    fuse_qkv: bool = checked(False)
    channels_last: bool = checked(False)
    attention: AttentionConfig = checked(factory=AttentionConfig)
    quantize: QuantizeConfig = checked(factory=QuantizeConfig)
    inductor_flags: InductorFlags = checked(factory=InductorFlags)
    compile: CompileConfig = checked(factory=CompileConfig)
    export: ExportConfig = checked(factory=ExportConfig)
    cache_dit: CacheDitConfig = checked(factory=CacheDitConfig)
    first_block_cache: FirstBlockCacheConfig = checked(factory=FirstBlockCacheConfig)
    parallel: ParallelConfig = checked(factory=ParallelConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> Recipe:
        """Check every field (type and range, fluxperf.recipe_checks), each step's own rules and every cross-step
        rule (fluxperf.recipe_rules); raise RecipeError naming the field or combination, the rule and the fix."""
        from fluxperf.recipe_rules import COMBINATION_RULES  # rules import this module's classes: imported late

        check_fields(self)  # the step configs: their type here; their fields when they were built (frozen since)
        for rule in COMBINATION_RULES:
            rule(self)
        return self

    # -- conversion -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build a Recipe from a (possibly partial) nested dict; unknown keys are errors."""
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe must be a dict, got {type(data).__name__}: {data!r}")
        return _from_dict(cls, data, path="")

    def replace(self, **changes: Any) -> Recipe:
        """Copy with top-level fields replaced; nested dicts update the nested step config."""
        merged = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif dataclasses.is_dataclass(value):
                merged[key] = dataclasses.asdict(value)
            else:
                merged[key] = value
        return Recipe.from_dict(merged)


# -- helpers ---------------------------------------------------------------------------------------------
def _from_dict(cls, data: dict[str, Any], path: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"in {path.rstrip('.')!r} " if path else ""
        raise RecipeError(f"unknown recipe key(s) {unknown} {where}. Known keys: {sorted(known)}.")
    kwargs = {}
    for name, value in data.items():
        sub_cls = _NESTED.get(name) if cls is Recipe else None
        if sub_cls is not None:
            if not isinstance(value, dict):
                raise RecipeError(f"recipe key {path + name!r} must be a dict of {sub_cls.__name__} fields, got {value!r}")
            kwargs[name] = _from_dict(sub_cls, value, path=f"{path}{name}.")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong field types caught by dataclass construction
        raise RecipeError(f"bad recipe section {path or 'recipe'}: {exc}") from exc


_NESTED = {
    "attention": AttentionConfig,
    "quantize": QuantizeConfig,
    "inductor_flags": InductorFlags,
    "compile": CompileConfig,
    "export": ExportConfig,
    "cache_dit": CacheDitConfig,
    "first_block_cache": FirstBlockCacheConfig,
    "parallel": ParallelConfig,
}
