"""Cross-step rules of a Recipe: combinations of individually valid settings that cannot work together.

Each rule takes a Recipe and raises `RecipeError` naming the combination, why it cannot work and the fix;
`Recipe.validate()` runs them all (after the per-field checks of fluxperf.recipe_checks) in COMBINATION_RULES order.
"""

from __future__ import annotations

from typing import Any

from fluxperf.errors import RecipeError

# A fluxperf.recipe.Recipe. Not imported, even for type checking: recipe.py imports these rules, and the one arrow
# between the two modules points down (recipe -> recipe_rules).
RecipeLike = Any


def _rule_flags_need_compiler(r: RecipeLike) -> None:
    if r.inductor_flags.enabled and not (r.compile.enabled or r.export.enabled):
        raise RecipeError(
            "inductor_flags.enabled=True with compile.enabled=False and export.enabled=False: the flags only change "
            "code that Inductor generates. Fix: enable compile (or export), or disable inductor_flags."
        )


def _rule_export_replaces_compile(r: RecipeLike) -> None:
    if r.export.enabled and r.compile.enabled:
        raise RecipeError(
            "export.enabled=True with compile.enabled=True: export builds AOTInductor packages, which replace "
            "torch.compile. Fix: set compile.enabled=False (the export rung does)."
        )


def _rule_export_no_caching(r: RecipeLike) -> None:
    for name, cfg in (("cache_dit", r.cache_dit), ("first_block_cache", r.first_block_cache)):
        if r.export.enabled and cfg.enabled:
            kind = f" (kind={cfg.kind!r})" if name == "first_block_cache" else ""
            raise RecipeError(
                f"export.enabled=True with {name}.enabled=True{kind}: caching decides per step in Python whether to run "
                "the blocks, but an exported AOTInductor package is one opaque graph with no place for that decision. "
                f"Fix: use compile instead of export, or disable {name}."
            )


def _rule_export_no_static_float8(r: RecipeLike) -> None:
    if r.export.enabled and r.quantize.activation_scale == "static":
        raise RecipeError(
            "export.enabled=True with quantize.activation_scale='static': an AOTInductor package of torchao's static "
            "float8 weights has never been built and loaded here (the dynamic ones needed a loader fix). Fix: use "
            "compile with static scales, or export with activation_scale='dynamic'."
        )


def _rule_cuda_graph(r: RecipeLike) -> None:
    if not r.compile.cuda_graph:
        return
    if not r.compile.enabled:
        raise RecipeError("compile.cuda_graph=True with compile.enabled=False: the CUDA graph replays the compiled "
                          "transformer call. Fix: enable compile, or set cuda_graph=False (export has its own "
                          "export.cudagraphs).")
    cache = _active_cache(r)
    if cache:
        raise RecipeError(f"compile.cuda_graph=True with {cache}.enabled=True: the cache decides in Python per step "
                          "which blocks run, but a replayed graph always runs what it captured. Fix: disable one.")
    if r.parallel.enabled:
        raise RecipeError("compile.cuda_graph=True with parallel.enabled=True: capturing NCCL collectives in the "
                          "graph has not been built or measured here. Fix: set cuda_graph=False for the parallel "
                          "rungs.")


def _rule_one_cache(r: RecipeLike) -> None:
    if r.cache_dit.enabled and r.first_block_cache.enabled:
        raise RecipeError(
            "cache_dit.enabled=True with first_block_cache.enabled=True: both cache the transformer's blocks and "
            "would fight over them. Fix: enable only one."
        )


def _rule_cache_no_cudagraphs(r: RecipeLike) -> None:
    cache = _active_cache(r)
    if cache and r.compile.enabled and r.compile.mode in ("reduce-overhead", "max-autotune"):
        raise RecipeError(
            f"compile.mode={r.compile.mode!r} (CUDA graphs) with {cache}.enabled=True: the cache runs Python between "
            "blocks, which CUDA graphs cannot capture. Fix: compile.mode=None or 'max-autotune-no-cudagraphs'."
        )


def _rule_fbc_breaks_the_graph(r: RecipeLike) -> None:
    # fluxperf.steps.caching.first_block.COMPILE_HINT and .teacache.COMPILE_HINT: the head block's hook calls a
    # torch.compiler.disable'd decision inside the compiled block (dynamo: "Skip inlining
    # `torch.compiler.disable()`d function"), whatever the scope; both kinds.
    fbc = r.first_block_cache
    if fbc.enabled and r.compile.enabled and r.compile.fullgraph:
        what = "TeaCache" if fbc.kind == "teacache" else "first-block cache"
        raise RecipeError(
            f"first_block_cache.enabled=True (kind={fbc.kind!r}) with compile.enabled=True and compile.fullgraph=True: "
            f"the {what} decides inside the head block with a torch.compiler.disable'd call, a graph break that "
            "fullgraph=True turns into an error at the first call. Fix: compile.fullgraph=False (the fbcache rung does)."
        )


def _rule_cache_dit_whole_fullgraph(r: RecipeLike) -> None:
    # fluxperf.steps.caching.cache_dit.COMPILE_HINT: whole-model fullgraph=True fails on cache-dit's mock.patch forward wrapper.
    c = r.compile
    if r.cache_dit.enabled and c.enabled and c.scope == "whole" and c.fullgraph:
        raise RecipeError(
            "cache_dit.enabled=True with compile.scope='whole' and compile.fullgraph=True: cache-dit wraps the "
            "transformer's forward in Python (mock.patch) that dynamo cannot trace as one graph, so the first call "
            "fails. Fix: compile.scope='regional' (the cache_dit rungs do) or compile.fullgraph=False."
        )


def check_mode_agrees_with_flags(mode: str | None, flags: dict[str, bool]) -> dict:
    """The Inductor options of compile `mode` (torch._inductor.list_mode_options; {} for None/'default').

    Raises:
        RecipeError: the mode sets an option the inductor flags set differently (torch.compile refuses mode and
            options together, so fluxperf expands the mode and merges the flags on top: they must agree).
    """
    if mode in (None, "default"):
        return {}
    import torch  # only for a compile mode combined with inductor flags

    options = dict(torch._inductor.list_mode_options(mode))
    overlap = {k: (options[k], v) for k, v in flags.items() if k in options and options[k] != v}
    if overlap:
        raise RecipeError(f"compile.mode={mode!r} sets {overlap} differently from inductor_flags. "
                          "Fix: disable inductor_flags or pick a mode that agrees.")
    return options


def _rule_mode_agrees_with_flags(r: RecipeLike) -> None:
    c = r.compile
    if c.enabled and r.inductor_flags.enabled:
        check_mode_agrees_with_flags(c.mode, r.inductor_flags.options())


def _rule_no_cudagraph_tree_modes(r: RecipeLike) -> None:
    # Measured on the H200 (2026-11-29, tests/gpu/test_recipe_space_gpu.py on the tiny schnell pipeline, torch 2.11):
    # regional reduce-overhead / max-autotune failed at the second block call ("accessing tensor output of CUDAGraphs
    # that has been overwritten by a subsequent run": every block of a stack shares one compiled region), and whole-
    # model reduce-overhead ran but gave an image 21 % (relative error 0.213) away from eager: a silent wrong result.
    c = r.compile
    if c.enabled and c.mode in ("reduce-overhead", "max-autotune"):
        raise RecipeError(
            f"compile.mode={c.mode!r} with compile.scope={c.scope!r}: this mode captures CUDA graph trees, which on "
            "FLUX pipelines either fail (regional: a block's output is overwritten by the next block's call) or "
            "silently change the image (whole: 21 % relative error on the H200). Fix: compile.mode="
            "'max-autotune-no-cudagraphs' (or None; the compile_faithful rung is flux-fast's max-autotune that way); "
            "for CUDA graphs use the export rung, whose CudaGraphRunner copies inputs and outputs."
        )


_HALF_ONLY = {"cudnn": "SDPA's cuDNN kernel", "flash": "SDPA's flash kernel", "fa3": "FlashAttention-3",
              "fa3_fp8": "FlashAttention-3 (fp8)", "aiter_fp8": "aiter's fp8 attention"}


def _rule_low_precision_needs_half(r: RecipeLike) -> None:
    # int8 (Int8DynamicActivationInt8WeightConfig) runs on bf16, fp16 and fp32 weights: checked on CPU, torchao 0.18
    if r.quantize.kind == "float8" and r.dtype != "bfloat16":
        raise RecipeError(
            f"quantize.kind='float8' with dtype={r.dtype!r}: torchao float8 dynamic quantization is "
            "applied to bf16 models (PerRow requires bf16 weights). Fix: dtype='bfloat16' (or quantize.kind='int8', "
            "which runs in any dtype)."
        )
    backend = r.attention.backend
    if backend in _HALF_ONLY and r.dtype == "float32":
        raise RecipeError(
            f"attention.backend={backend!r} with dtype='float32': {_HALF_ONLY[backend]} takes bfloat16/float16 "
            "inputs (only 'sdpa' runs in float32). Fix: dtype='bfloat16' or attention.backend='sdpa'."
        )


def _rule_parallel_alone_where_needed(r: RecipeLike) -> None:
    # Context parallelism (fluxperf.steps.parallel) shards each step's sequence over ranks and exchanges it inside
    # every attention call (NCCL all-to-all / all-gather): what cannot take part in that is refused here.
    p = r.parallel
    if not p.enabled:
        return
    what = f"parallel.enabled=True (ulysses_degree={p.ulysses_degree}, ring_degree={p.ring_degree})"
    if r.export.enabled:
        raise RecipeError(
            f"{what} with export.enabled=True: an AOTInductor package is built and replayed (CUDA graphs) for one "
            "GPU, with no place for the collectives of context parallelism. Fix: compile instead of export "
            "(the cp2_* rungs do), or disable parallel.")
    cache = _active_cache(r)
    if cache:
        raise RecipeError(
            f"{what} with {cache}.enabled=True: the cache decides per step from the residuals each rank sees, which "
            "under context parallelism are its own shard of the sequence: ranks can decide differently and one "
            "then waits forever in the attention's collective. Fix: disable the cache, or parallel.")
    if r.attention.backend != "sdpa":
        raise RecipeError(
            f"{what} with attention.backend={r.attention.backend!r}: fluxperf's attention processors ignore "
            "diffusers' parallel config, so each rank would attend over its own shard only (a silently wrong "
            "image). Fix: attention.backend='sdpa' and pick the kernel with parallel.attention ('native', "
            "'flash', 'cudnn').")


def _active_cache(r: RecipeLike) -> str | None:
    return "cache_dit" if r.cache_dit.enabled else ("first_block_cache" if r.first_block_cache.enabled else None)


COMBINATION_RULES = (
    _rule_flags_need_compiler,
    _rule_export_replaces_compile,
    _rule_export_no_static_float8,
    _rule_cuda_graph,
    _rule_export_no_caching,
    _rule_one_cache,
    _rule_cache_no_cudagraphs,
    _rule_fbc_breaks_the_graph,
    _rule_cache_dit_whole_fullgraph,
    _rule_low_precision_needs_half,
    _rule_mode_agrees_with_flags,
    _rule_no_cudagraph_tree_modes,
    _rule_parallel_alone_where_needed,
)
