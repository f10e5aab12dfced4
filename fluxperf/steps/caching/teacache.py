"""TeaCache (Timestep Embedding Aware Cache) on diffusers FLUX pipelines, as diffusers-style block hooks.

Source: Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model" (arXiv 2411.19108),
and its reference FLUX implementation, ali-vilab/TeaCache TeaCache4FLUX/teacache_flux.py (Apache-2.0), which
replaces FluxTransformer2DModel.forward. diffusers 0.42.1 ships no TeaCache hook (it has FirstBlockCache, MagCache,
TaylorSeer, SeaCache, FasterCache, PyramidAttentionBroadcast), so fluxperf implements the same rule with
diffusers' hook machinery (`diffusers.hooks.HookRegistry` / `ModelHook` / `StateManager`, as its MagCache does):

    indicator   m_t = transformer_blocks[0].norm1(hidden_states, emb=temb)[0]: the modulated input of the first
                block (AdaLayerNormZero output; (B, image tokens, 3072) in the model's dtype)
    distance    rel_l1 = mean|m_t - m_{t-1}| / mean|m_{t-1}|   (computed in float32), every step
    rescale     FLUX_COEFFICIENTS, a degree-4 polynomial (numpy.poly1d order, highest power first):
                    [4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01]
    decision    step 0 and the last step: computed, accumulator = 0. Otherwise accumulator += rescale(rel_l1);
                accumulator < threshold: reuse, else compute and accumulator = 0. m_{t-1} = m_t either way.
    reuse       every block is skipped; the cached residual (image hidden states after the last single block
                minus the hidden states entering block 0, from the last computed step) is added to hidden_states
    thresholds  published for FLUX.1-dev (TeaCache4FLUX README): 0.25 ~1.5x, 0.4 ~1.8x, 0.6 ~2.0x, 0.8 ~2.25x

The polynomial was fitted on real FLUX.1 weights: on fluxperf's random-weight pipelines the indicator changes far
more per step, so the published thresholds reuse little or nothing there (stats report every rel_l1 so a caller
can pick a threshold that engages, as perf/test_variants.py does for the other caches).

What fluxperf adds, as for its first-block cache (fluxperf.steps.caching.first_block):
* per-call counts: the head block records each "cond" step's decision; `teacache_stats(pipe)` and
  fluxperf.steps.caching.stats.last_call_cache_stats report them (computed / reused steps, the distances);
* state reset at the START of every pipeline call (a wrapper of `pipe.check_inputs`, which every diffusers FLUX
  pipeline calls first): a second call never reuses the first call's residual, also after a call that raised;
* FluxKontextPipeline opens no `cache_context`: a pre-hook opens "cond" around each transformer call when none is.
* the step count of each call is the pipeline's own (`pipe._num_timesteps`, set before its denoising loop), so
  the last step is the last step of THIS call; the `num_inference_steps` given at apply time is the fallback.

Compile: apply before torch.compile, regional with fullgraph=False (COMPILE_HINT): the decision is a
`torch.compiler.disable`d call (a `.item()` host sync) inside the head block. Export is refused (recipe rule): an
AOTInductor package has no place for a per-step Python decision. CUDA-graph compile modes are refused too.

Example:
    >>> from fluxperf.recipe import FirstBlockCacheConfig
    >>> apply_teacache(pipe, FirstBlockCacheConfig(enabled=True, kind="teacache", threshold=0.4), variant="dev",
    ...                num_inference_steps=28)  # doctest: +SKIP
    >>> teacache_stats(pipe)["cached_steps"]  # doctest: +SKIP
    11
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from fluxperf.errors import FluxperfError, RecipeError
from fluxperf.steps.caching.common import (
    HookState,
    check_not_compiled,
    check_steps,
    check_variant,
    close_own_context,
    detach,
    enabled_cache,
    install_hooks,
    open_cond_context,
    state_of,
    step_stats,
)

KIND = "teacache"  # this cache's name in fluxperf.steps.caching.common and in cache_stats' reports
FLUX_COEFFICIENTS = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)
PUBLISHED_THRESHOLDS = {0.25: "~1.5x", 0.4: "~1.8x", 0.6: "~2.0x", 0.8: "~2.25x"}  # TeaCache4FLUX README
HEAD_HOOK, BLOCK_HOOK = "fluxperf_teacache_head", "fluxperf_teacache_block"
COMPILE_HINT = {"scope": "regional", "fullgraph": False,
                "why": "the head block's TeaCache hook calls a torch.compiler.disable'd decision inside the compiled "
                       "block: fullgraph=True fails; fullgraph=False breaks the head block's graph once per step."}


def rescale(rel_l1: float, coefficients=FLUX_COEFFICIENTS) -> float:
    """The rescaled distance: the polynomial `coefficients` (highest power first, numpy.poly1d order) at `rel_l1`.

    Example:
        >>> round(rescale(0.0), 6)
        0.264231
        >>> round(rescale(0.2), 4)
        0.2621
    """
    out = 0.0
    for c in coefficients:  # Horner
        out = out * rel_l1 + c
    return out


@dataclass
class _Record:
    """fluxperf's view of one pipeline call: the "cond" decisions, in step order."""

    computed: list[bool] = field(default_factory=list)
    rel_l1: list[float | None] = field(default_factory=list)  # None: step 0 / the last step (always computed)
    accumulated: list[float] = field(default_factory=list)  # the accumulator after each decision

    def clear(self) -> None:
        self.computed.clear()
        self.rel_l1.clear()
        self.accumulated.clear()


@dataclass(kw_only=True)
class _State(HookState):
    manager: Any  # diffusers StateManager shared by the hooks
    record: _Record


def _hook_classes():
    """The diffusers hook classes (built lazily: importing this module imports neither torch nor diffusers)."""
    import torch
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.hooks.hooks import BaseState, ModelHook

    class TeaCacheBlockState(BaseState):
        """Per cache context ("cond"/"uncond"): what the hooks share across one denoising loop."""

        def __init__(self) -> None:
            self.step = 0  # transformer calls so far in this context (the denoising step index)
            self.accumulated = 0.0  # sum of rescaled distances since the last computed step
            self.previous_modulated = None  # m_{t-1}
            self.previous_residual = None  # image hidden states: tail output - head input, last computed step
            self.head_input = None  # hidden states entering block 0 on a computed step
            self.should_compute = True

        def reset(self) -> None:
            self.__init__()

    class TeaCacheHeadHook(ModelHook):
        """On transformer_blocks[0]: computes the indicator, decides, and on reuse returns the cached result."""

        _is_stateful = True

        def __init__(self, state_manager, threshold: float, num_steps, record: _Record):
            super().__init__()
            self.state_manager, self.threshold, self.num_steps, self.record = state_manager, threshold, num_steps, record
            self._metadata = None

        def initialize_hook(self, module):
            self._metadata = TransformerBlockRegistry.get(type(module))
            return module

        def new_forward(self, module, *args, **kwargs):
            get = self._metadata._get_parameter_from_args_kwargs
            hidden_states, temb = get("hidden_states", args, kwargs), get("temb", args, kwargs)
            modulated = module.norm1(hidden_states, emb=temb)[0]
            state = self.state_manager.get_state()
            if self._decide(state, modulated):
                state.head_input = hidden_states
                return self.fn_ref.original_forward(*args, **kwargs)
            out = [None, None]
            out[self._metadata.return_hidden_states_index] = hidden_states + state.previous_residual
            out[self._metadata.return_encoder_hidden_states_index] = get("encoder_hidden_states", args, kwargs)
            return tuple(out)

        @torch.compiler.disable
        def _decide(self, state, modulated) -> bool:
            n, i, rel = self.num_steps(), state.step, None
            if i == 0 or i >= n - 1 or state.previous_modulated is None or state.previous_residual is None:
                compute, state.accumulated = True, 0.0
            else:
                prev = state.previous_modulated
                rel = ((modulated - prev).abs().float().mean() / prev.abs().float().mean()).item()
                state.accumulated += rescale(rel)
                compute = state.accumulated >= self.threshold
                if compute:
                    state.accumulated = 0.0
            state.previous_modulated = modulated
            state.should_compute = compute
            state.step = 0 if i + 1 >= n else i + 1  # as the reference: the counter wraps after the last step
            if self.state_manager.context.name == "cond":
                self.record.computed.append(compute)
                self.record.rel_l1.append(rel)
                self.record.accumulated.append(state.accumulated)
            return compute

        def reset_state(self, module):
            self.state_manager.reset()
            return module

    class TeaCacheBlockHook(ModelHook):
        """On every other block: passes its inputs through on reuse; the tail stores the residual when computing."""

        def __init__(self, state_manager, is_tail: bool):
            super().__init__()
            self.state_manager, self.is_tail = state_manager, is_tail
            self._metadata = None

        def initialize_hook(self, module):
            self._metadata = TransformerBlockRegistry.get(type(module))
            return module

        def new_forward(self, module, *args, **kwargs):
            state = self.state_manager.get_state()
            meta = self._metadata
            if not state.should_compute:
                out = [None, None]
                out[meta.return_hidden_states_index] = meta._get_parameter_from_args_kwargs(
                    "hidden_states", args, kwargs)
                out[meta.return_encoder_hidden_states_index] = meta._get_parameter_from_args_kwargs(
                    "encoder_hidden_states", args, kwargs)
                return tuple(out)
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.is_tail:
                state.previous_residual = output[meta.return_hidden_states_index] - state.head_input
                state.head_input = None
            return output

    return TeaCacheBlockState, TeaCacheHeadHook, TeaCacheBlockHook


def apply_teacache(pipe, cfg, *, variant: str, num_inference_steps: int) -> dict:
    """Enable TeaCache on a FLUX pipeline's transformer (in place) and return a report.

    Args:
        pipe: FluxPipeline (dev) or FluxKontextPipeline, not yet compiled.
        cfg: fluxperf.recipe.FirstBlockCacheConfig with kind="teacache"; `enabled=False` changes nothing.
        variant: "dev" or "kontext" ("schnell" is refused: 4 steps, of which the first and last are computed).
        num_inference_steps: steps of the calls to come (the fallback step count; a pipeline call uses its own).
    Returns:
        {"enabled", "kind", "threshold", "coefficients", "head_block", "tail_block", "num_inference_steps",
         "max_cacheable_steps", "compile"}.
    Raises:
        RecipeError: wrong kind, schnell, too few steps, another cache on the pipeline, a compiled transformer.
        FluxperfError: a pipeline without check_inputs, or a transformer without FLUX's two block lists.
    """
    if not cfg.enabled:
        return {"enabled": False, "kind": cfg.kind}
    cfg.validate()
    what = "first_block_cache (kind='teacache')"
    if cfg.kind != "teacache":
        raise RecipeError(f"apply_teacache got first_block_cache.kind={cfg.kind!r}. Fix: kind='teacache', or "
                          "fluxperf.steps.caching.first_block.apply_first_block_cache for the first-block cache.")
    check_variant(variant, pipe, what)
    check_steps(num_inference_steps, 2, what)  # the first and the last step are always computed
    transformer = pipe.transformer
    _check_free(pipe, what)
    check_not_compiled(transformer, what)
    if not callable(getattr(pipe, "check_inputs", None)):
        raise FluxperfError(f"{what}: {type(pipe).__name__} has no check_inputs method, which fluxperf wraps to "
                            "reset the cache at the start of each call. Fix: use FluxPipeline or FluxKontextPipeline.")

    from diffusers.hooks.hooks import HookRegistry, StateManager

    state_cls, head_cls, block_cls = _hook_classes()
    blocks = _blocks(transformer)
    manager, record = StateManager(state_cls), _Record()
    pipe_ref = weakref.ref(pipe)

    def num_steps() -> int:
        p = pipe_ref()
        n = getattr(p, "_num_timesteps", None) if p is not None else None
        return n if isinstance(n, int) and n > 0 else num_inference_steps

    (head_name, head), *rest = blocks
    HookRegistry.check_if_exists_or_initialize(head).register_hook(
        head_cls(manager, float(cfg.threshold), num_steps, record), HEAD_HOOK)
    for k, (_, block) in enumerate(rest):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(block_cls(manager, k == len(rest) - 1),
                                                                        BLOCK_HOOK)
    # hooks on the blocks stale the transformer registry's child list, which cache_context walks (as enable_cache)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    state = _State(manager=manager, record=record, report={
        "enabled": True, "kind": KIND, "threshold": float(cfg.threshold), "coefficients": list(FLUX_COEFFICIENTS),
        "head_block": head_name, "tail_block": rest[-1][0], "num_inference_steps": num_inference_steps,
        "max_cacheable_steps": num_inference_steps - 2, "compile": COMPILE_HINT,
    })

    def reset() -> None:
        close_own_context(state)
        record.clear()
        manager.reset()

    install_hooks(pipe, KIND, state, _pre_hook(state), _post_hook(state), reset)
    return dict(state.report)


def teacache_stats(pipe) -> dict:
    """Counts of the LAST pipeline call ("cond" transformer calls).

    Returns:
        {"cached_steps": reused steps, "executed_steps": computed steps, "total_steps", "cached_step_indices",
         "num_inference_steps": configured, "rel_l1": [per step: the indicator's relative L1 change, None on the
         always-computed first/last step], "accumulated": [the accumulator after each step's decision]}.
    Raises:
        FluxperfError: TeaCache is not enabled on `pipe`.
    """
    state = _state(pipe, "teacache_stats")
    rec = state.record
    cached = [i for i, computed in enumerate(rec.computed) if not computed]
    return {**step_stats(cached, len(rec.computed), state.report["num_inference_steps"]),
            "rel_l1": list(rec.rel_l1), "accumulated": list(rec.accumulated)}


def disable_teacache(pipe) -> None:
    """Remove TeaCache's hooks (blocks and transformer) and the check_inputs wrapper; the uncached path is restored.

    Raises:
        FluxperfError: TeaCache is not enabled on `pipe`.
    """
    from diffusers.hooks.hooks import HookRegistry

    state = _state(pipe, "disable_teacache")
    for handle in state.handles:
        handle.remove()
    if pipe.__dict__.get("check_inputs") is state.check_inputs:
        del pipe.check_inputs
    close_own_context(state)
    registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
    for name in (HEAD_HOOK, BLOCK_HOOK):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
    detach(pipe, KIND)


def is_teacache_enabled(pipe) -> bool:
    """True if apply_teacache enabled TeaCache on `pipe` (and disable_teacache has not run since)."""
    return enabled_cache(pipe) == KIND


# -- internals ---------------------------------------------------------------------------------------------------
def _blocks(transformer) -> list[tuple[str, Any]]:
    """[(name, block)] of FLUX's double then single blocks, in call order (FluxTransformer2DModel.forward's)."""
    double = getattr(transformer, "transformer_blocks", None)
    single = getattr(transformer, "single_transformer_blocks", None)
    if double is None or single is None or len(double) < 1 or len(double) + len(single) < 2:
        raise FluxperfError(
            f"TeaCache: {type(transformer).__name__} lacks FLUX's transformer_blocks + single_transformer_blocks "
            "(at least one double block and two blocks in all). Fix: use a diffusers FluxTransformer2DModel.")
    return ([(f"transformer_blocks.{i}", b) for i, b in enumerate(double)]
            + [(f"single_transformer_blocks.{i}", b) for i, b in enumerate(single)])


def _check_free(pipe, what: str) -> None:
    kind = enabled_cache(pipe)
    if kind is not None:
        raise RecipeError(f"{what} with the {kind} cache already enabled on this pipeline: block caches would fight "
                          "over the blocks. Fix: enable only one (fluxperf.steps.caching.stats.disable_active_cache).")
    transformer = pipe.transformer
    if getattr(transformer, "is_cache_enabled", False) or getattr(transformer, "_is_cached", False):
        raise RecipeError(f"{what}: a cache is already enabled on the transformer (diffusers or cache-dit). "
                          "Fix: transformer.disable_cache() (or cache-dit's disable) first.")


def _pre_hook(state: _State):
    def hook(module, args, kwargs):
        open_cond_context(state, module, state.manager)

    return hook


def _post_hook(state: _State):
    def hook(module, args, kwargs, output):
        try:
            if output is None:  # the forward raised: drop the call's partial state so the next call starts clean
                state.record.clear()
                state.manager.reset()
        finally:
            close_own_context(state)

    return hook


def _state(pipe, what: str) -> _State:
    return state_of(pipe, KIND, f"{what}: TeaCache is not enabled on this pipeline. Fix: apply_teacache(pipe, ...).")
