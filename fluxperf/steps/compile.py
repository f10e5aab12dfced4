"""torch.compile of the transformer (regional or whole) and the VAE decoder, with inductor flags scoped.

The flags never touch the global `torch._inductor.config`: they travel as torch.compile `options=` (applied by
Inductor only while compiling this module's graphs). `inductor_flags(...)` is the scoped patch for code that
must run under global flags (it restores them on exit, also on error).

Shapes: `CompileConfig.dynamic=False` compiles static shapes first and lets dynamo make a dimension dynamic once
it changes between calls (torch.compile(dynamic=None), automatic dynamic shapes): a new resolution, batch or
Kontext conditioning size costs one more graph per region, then every later size is served. torch's own
dynamic=False (one graph per shape) is never passed: each resolution cost FluxTransformerBlock one graph and
FluxSingleTransformerBlock two (its first block takes a contiguous tensor, the others the strided slices the
previous block returns), so the 5th resolution hit dynamo's recompile limit (8). `dynamic=True` is dynamic from
the first call. Recompiles are counted and a reached limit is a clear error (fluxperf.steps.compile_watch).

Example:
    >>> with inductor_flags({"epilogue_fusion": False}):  # doctest: +SKIP
    ...     compiled(x)
"""

from __future__ import annotations

import contextlib

from fluxperf.recipe import CompileConfig
from fluxperf.recipe_rules import check_mode_agrees_with_flags
from fluxperf.steps.compile_watch import CompileWatch


def compile_options(cfg: CompileConfig, flags: dict[str, bool]) -> dict:
    """kwargs for torch.compile / nn.Module.compile.

    torch.compile refuses `mode` and `options` together, so a mode is expanded into its options
    (torch._inductor.list_mode_options) and the flags are merged on top. `cfg.dynamic` False becomes
    dynamic=None (static first, automatic dynamic on change; see the module docstring), True stays True.
    """
    kwargs: dict = {"fullgraph": cfg.fullgraph, "dynamic": True if cfg.dynamic else None}
    mode = None if cfg.mode in (None, "default") else cfg.mode
    if not flags:
        if mode:
            kwargs["mode"] = mode
        return kwargs
    options = check_mode_agrees_with_flags(mode, flags)  # RecipeError naming the options set differently
    options.update(flags)
    kwargs["options"] = options
    return kwargs


def compile_transformer(transformer, cfg: CompileConfig, flags: dict[str, bool], *,
                        watch: CompileWatch | None = None) -> dict:
    """Compile in place: regional (the repeated FLUX blocks) or the whole module. Returns a report dict.

    Args:
        watch: counts the compiled regions' graphs and guards the transformer's calls (a reached recompile limit
            raises fluxperf.steps.compile_watch.RecompileLimitError); a new one when None.
    """
    watch = watch if watch is not None else CompileWatch()
    kwargs = compile_options(cfg, flags)
    if cfg.scope == "regional":
        # ModelMixin.compile_repeated_blocks compiles every FluxTransformerBlock / FluxSingleTransformerBlock
        # in place; identical blocks share one compiled graph, hence ~5x faster compile than whole-model.
        transformer.compile_repeated_blocks(**kwargs)
        blocks = [m for m in transformer.modules() if getattr(m, "_compiled_call_impl", None) is not None]
        compiled = len(blocks)
        for cls in dict.fromkeys(type(m) for m in blocks):
            watch.add_region(cls)
        watch.guard(transformer, transformer._call_impl)
    else:
        transformer.compile(**kwargs)
        compiled = 1
        watch.add_region(type(transformer))
        watch.guard(transformer, transformer._compiled_call_impl)
    return {"scope": cfg.scope, "mode": cfg.mode, "fullgraph": cfg.fullgraph, "dynamic": cfg.dynamic,
            "torch_dynamic": kwargs["dynamic"], "compiled_modules": compiled,
            "inductor_options": kwargs.get("options", {})}


def compile_vae_decoder(vae, cfg: CompileConfig, flags: dict[str, bool], *, watch: CompileWatch | None = None
                        ) -> dict:
    """Compile the VAE decoder module in place (what vae.decode spends its time in); `watch` as in
    compile_transformer."""
    watch = watch if watch is not None else CompileWatch()
    kwargs = compile_options(cfg, flags)
    decoder = vae.decoder
    decoder.compile(**kwargs)
    watch.add_region(type(decoder))
    watch.guard(decoder, decoder._compiled_call_impl)
    return {"vae_decoder": True}


@contextlib.contextmanager
def inductor_flags(flags: dict[str, bool]):
    """Patch torch._inductor.config with `flags` for the duration of the block, then restore them."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(flags):
        yield


def inductor_config_snapshot(keys=None) -> dict:
    """Current values of the inductor config (all, or `keys`), for restoration checks."""
    import torch._inductor.config as inductor_config

    cfg = inductor_config.get_config_copy()
    return {k: cfg[k] for k in keys} if keys is not None else cfg
