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
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from .errors import RecipeError

DTYPES = ("float32", "bfloat16", "float16")


class AttentionBackendName(str, Enum):
    """Attention backends a recipe can select (the registry in fluxperf.attention implements them)."""

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


@dataclass(frozen=True)
class AttentionConfig:
    """Attention backend for the transformer.

    Args:
        backend: one of AttentionBackendName's values.
        fp8_scaling: for fp8 backends: "unscaled" (plain cast, flux-fast's) or "per_head" (amax descales).
        fallback: None (fail if the backend cannot run) or "sdpa" (fall back, recorded in the report).
    """

    backend: str = "sdpa"
    fp8_scaling: str = "unscaled"
    fallback: str | None = None

    def validate(self) -> None:
        _one_of("attention.backend", self.backend, AttentionBackendName.values())
        _one_of("attention.fp8_scaling", self.fp8_scaling, ("unscaled", "per_head"))
        _one_of("attention.fallback", self.fallback, (None, "sdpa"))
        if self.fp8_scaling != "unscaled" and self.backend not in FP8_BACKENDS:
            raise RecipeError(
                f"attention.fp8_scaling={self.fp8_scaling!r} only applies to fp8 backends {FP8_BACKENDS}, "
                f"but attention.backend={self.backend!r}. Fix: use backend 'fa3_fp8' or leave fp8_scaling 'unscaled'."
            )


@dataclass(frozen=True)
class QuantizeConfig:
    """torchao float8 dynamic activation + float8 weight quantization of the transformer's Linear layers.

    Args:
        kind: "none" or "float8".
        granularity: "tensor" (PerTensor, flux-fast's) or "row" (PerRow).
    """

    kind: str = "none"
    granularity: str = "tensor"

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def validate(self) -> None:
        _one_of("quantize.kind", self.kind, ("none", "float8"))
        _one_of("quantize.granularity", self.granularity, ("tensor", "row"))


@dataclass(frozen=True)
class InductorFlags:
    """flux-fast's inductor flags. Applied only to the code fluxperf compiles (torch.compile `options=` or
    AOTInductor `inductor_configs=`) and, where a global patch is needed, as a scoped patch that is restored."""

    enabled: bool = False
    conv_1x1_as_mm: bool = True
    epilogue_fusion: bool = False
    coordinate_descent_tuning: bool = True
    coordinate_descent_check_all_directions: bool = True

    def options(self) -> dict[str, bool]:
        """The inductor config entries to set (empty when disabled)."""
        if not self.enabled:
            return {}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "enabled"}

    def validate(self) -> None:
        for f in fields(self):
            _bool(f"inductor_flags.{f.name}", getattr(self, f.name))


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileConfig:
    """torch.compile of the transformer (and the VAE decoder).

    Args:
        enabled: compile at all.
        scope: "regional" (compile_repeated_blocks: the 19 + 38 blocks, fast to compile) or "whole".
        mode: torch.compile mode (None = default).
        fullgraph: refuse graph breaks.
        vae: also compile the VAE decoder.
    """

    enabled: bool = False
    scope: str = "regional"
    mode: str | None = None
    fullgraph: bool = True
    dynamic: bool = False
    vae: bool = True

    def validate(self) -> None:
        _bool("compile.enabled", self.enabled)
        _one_of("compile.scope", self.scope, ("regional", "whole"))
        _one_of("compile.mode", self.mode, COMPILE_MODES)


@dataclass(frozen=True)
class ExportConfig:
    """torch.export + AOTInductor packages (transformer and VAE decoder), replayed under CUDA graphs.

    Args:
        enabled: export instead of torch.compile.
        cudagraphs: run the loaded packages under fluxperf's CUDA-graph wrapper.
        vae: also export the VAE decoder.
        cache_dir: where .pt2 packages are stored (None: $FLUXPERF_CACHE or ~/.cache/fluxperf/aoti).
    """

    enabled: bool = False
    cudagraphs: bool = True
    vae: bool = True
    cache_dir: str | None = None

    def validate(self) -> None:
        _bool("export.enabled", self.enabled)
        _bool("export.cudagraphs", self.cudagraphs)


@dataclass(frozen=True)
class CacheDitConfig:
    """cache-dit DBCache (Fn/Bn compute blocks over FLUX's 57 blocks). Not for schnell (4 steps)."""

    enabled: bool = False
    Fn: int = 12
    Bn: int = 12
    residual_diff_threshold: float = 0.12
    max_warmup_steps: int = 8
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1

    def validate(self) -> None:
        _bool("cache_dit.enabled", self.enabled)
        for name in ("Fn", "Bn", "max_warmup_steps"):
            _int_range(f"cache_dit.{name}", getattr(self, name), 0, 57)
        if self.enabled and self.Fn < 1:
            raise RecipeError(f"cache_dit.Fn={self.Fn}: DBCache needs at least one front compute block. Fix: Fn >= 1.")
        if not isinstance(self.residual_diff_threshold, (int, float)) or not 0 < self.residual_diff_threshold < 10:
            raise RecipeError(
                f"cache_dit.residual_diff_threshold={self.residual_diff_threshold!r} must be a number in (0, 10). "
                "Fix: use e.g. 0.08-0.24."
            )


@dataclass(frozen=True)
class FirstBlockCacheConfig:
    """diffusers' first-block cache (or TeaCache when `kind="teacache"`)."""

    enabled: bool = False
    kind: str = "first_block"
    threshold: float = 0.2

    def validate(self) -> None:
        _bool("first_block_cache.enabled", self.enabled)
        _one_of("first_block_cache.kind", self.kind, ("first_block", "teacache"))
        if not isinstance(self.threshold, (int, float)) or not 0 < self.threshold < 5:
            raise RecipeError(
                f"first_block_cache.threshold={self.threshold!r} must be a number in (0, 5). Fix: use 0.15-0.4."
            )


@dataclass(frozen=True)
class Recipe:
    """Everything to apply to a pipeline. Build with the ladder (`fluxperf.ladder.rung`) or from a dict.

    Args:
        name: label used in reports.
        dtype: dtype of every pipeline component ("float32", "bfloat16", "float16").
        fuse_qkv: fuse Q/K/V projections (transformer and VAE).
        channels_last: VAE in channels_last memory format.
    """

    name: str = "custom"
    dtype: str = "bfloat16"
    fuse_qkv: bool = False
    channels_last: bool = False
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    inductor_flags: InductorFlags = field(default_factory=InductorFlags)
    compile: CompileConfig = field(default_factory=CompileConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    cache_dit: CacheDitConfig = field(default_factory=CacheDitConfig)
    first_block_cache: FirstBlockCacheConfig = field(default_factory=FirstBlockCacheConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> Recipe:
        """Check each step and every cross-step rule; raise RecipeError naming the combination and the fix."""
        _one_of("dtype", self.dtype, DTYPES)
        _bool("fuse_qkv", self.fuse_qkv)
        _bool("channels_last", self.channels_last)
        for key, sub_cls in _NESTED.items():
            if not isinstance(getattr(self, key), sub_cls):
                raise RecipeError(
                    f"Recipe.{key} must be a {sub_cls.__name__}, got {getattr(self, key)!r}. "
                    "Fix: pass the config object, or build from a dict with Recipe.from_dict."
                )
        for sub in (self.attention, self.quantize, self.inductor_flags, self.compile, self.export,
                    self.cache_dit, self.first_block_cache):
            sub.validate()
        for rule in _COMBINATION_RULES:
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


# -- cross-step rules ------------------------------------------------------------------------------------
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


_COMBINATION_RULES = (
    _rule_flags_need_compiler,
    _rule_export_replaces_compile,
    _rule_export_no_caching,
    _rule_one_cache,
    _rule_cache_no_cudagraphs,
    _rule_low_precision_needs_half,
)


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
}


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise RecipeError(f"{name}={value!r} is not allowed. Fix: use one of {list(allowed)}.")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise RecipeError(f"{name}={value!r} must be true or false (a bool), got {type(value).__name__}.")


def _int_range(name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise RecipeError(f"{name}={value!r} must be an integer in [{lo}, {hi}].")
