"""Context parallelism of the FLUX transformer through diffusers' own API (issue 16).

What it does: each denoising step's token sequence is split over `world_size = ulysses_degree * ring_degree`
processes (one per GPU), and every attention call exchanges it (diffusers 0.42.1, `ContextParallelConfig` in
diffusers/models/_modeling_parallel.py, hooks in diffusers/hooks/context_parallel.py, attention in
diffusers/models/attention_dispatch.py):

* `FluxTransformer2DModel._cp_plan` splits `hidden_states` and `encoder_hidden_states` on dim 1 (the sequence)
  and `img_ids` / `txt_ids` on dim 0 at the transformer's input, and all-gathers the output of `proj_out`
  (dim 1): the pipeline around it (scheduler, VAE) sees full tensors on every rank, and every rank makes the
  same image.
* Ulysses (`TemplatedUlyssesAttention`): all-to-all from sequence shards to head shards, full attention over
  heads/N, all-to-all back. Heads must divide by the degree (FLUX.1: 24 heads: 2, 3, 4, 6, 8).
* Ring (`TemplatedRingAttention`): K/V all-gathered, N partial attentions merged by their log-sum-exp: needs a
  backend that returns it (`_native_flash`, `_native_cudnn`); diffusers' `native` raises for it.
* Backends with context-parallel support (`_AttentionBackendRegistry._supports_context_parallel`): native,
  _native_flash, _native_cudnn, flash (flash-attn 2 package), the hub FA3 builds, sage, _native_npu. fluxperf's
  own processors (fa3, fa3_fp8, aiter) ignore the parallel config: recipe_rules refuses them with parallel.
* Sequence lengths must divide by the world size (EquipartitionSharder asserts it): 1024x1024 has 4096 image
  tokens, schnell 256 / dev 512 text tokens, so 2, 4 and 8 ranks fit.

Where it runs in apply() (fluxperf.stages): after dtype, fuse_qkv, attention, quantize (they change weights and
Linear modules, which the split does not care about; the processors present when `enable_parallelism` runs are
the ones that receive the parallel config) and BEFORE compile (the compiled blocks must trace the collectives and
the per-rank shapes; a model compiled before its hooks were added would run the unsplit graph). Refused
(recipe_rules._rule_parallel_alone_where_needed): export (one-GPU package, CUDA graphs), block caches (per-rank
decisions from shards could differ and deadlock a collective), fluxperf attention processors.

Process group: not created here. fluxperf.parallel_launch starts one process per GPU, sets the device, and
initializes torch.distributed (NCCL on GPUs, gloo on CPU for tests) before apply(); this step checks that the
process group's size is the recipe's world size.

gloo on CPU (the CPU tests): diffusers 0.42.1's `ModelMixin._resolve_parallel_config` picks the device as
`rank % torch.accelerator.device_count()`, a ZeroDivisionError on a machine without an accelerator. Only there
(no accelerator, gloo process group) fluxperf resolves the config itself with the same calls on a CPU device
mesh, and then runs diffusers' `enable_parallelism` unchanged (backend check, processors' parallel config, the
`_cp_plan` hooks). With GPUs, `enable_parallelism` runs exactly as documented.

Undo: diffusers 0.42.1 has no `disable_parallelism`; remove_parallel removes the `_cp_plan` hooks
(`diffusers.hooks.context_parallel.remove_context_parallel`), clears the processors' and the model's parallel
config and resets the attention backend it set.
"""

from __future__ import annotations

import types
from typing import Any

from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.recipe import CP_ATTENTION, ParallelConfig

LAUNCH_HINT = ("run through fluxperf.parallel_launch (one process per GPU), e.g. `fluxperf ladder --rungs "
               "cp2_ulysses` on a machine with {n} or more CUDA GPUs")


def unavailable(cfg: ParallelConfig, device) -> UnavailableError | None:
    """The UnavailableError apply() raises for `cfg` on `device` (a torch.device), or None.

    A process group of the recipe's world size is enough (CPU tests run gloo); without one, `device` must be CUDA
    and the machine must see at least world_size GPUs (the launcher then creates the group).
    """
    import torch
    import torch.distributed as dist

    n = cfg.world_size
    what = f"context parallelism over {n} GPUs (parallel.ulysses_degree={cfg.ulysses_degree}, " \
           f"ring_degree={cfg.ring_degree})"
    if dist.is_available() and dist.is_initialized():
        found = dist.get_world_size()
        if found != n:
            return UnavailableError(what, f"the process group has {found} ranks, the recipe needs {n}",
                                    f"launch {n} processes (fluxperf.parallel_launch.launch(..., nprocs={n}))")
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if getattr(device, "type", str(device)) != "cuda" or count < n:
        return UnavailableError(what, f"this machine has {count} CUDA GPU(s) and the pipeline runs on "
                                f"{getattr(device, 'type', device)}", LAUNCH_HINT.format(n=n))
    return None


def apply_parallel(transformer, cfg: ParallelConfig, *, spec=None) -> dict[str, Any]:
    """Enable diffusers' context parallelism on `transformer` in this rank's process.

    Args:
        transformer: a diffusers FluxTransformer2DModel, on this rank's device.
        cfg: the recipe's ParallelConfig (enabled).
        spec: the fluxperf.model.shapes.ShapeSpec of the calls to come, to check that its sequences split evenly
            (None: checked by diffusers at the first call, with an assertion).
    Returns:
        report: world_size, rank, ulysses_degree, ring_degree, dist_backend ("nccl" / "gloo"), attention (the
        diffusers backend), device, heads, memo-free.
    Raises:
        UnavailableError: no process group of the recipe's world size (and no GPUs to launch one on).
        RecipeError: heads or sequence lengths that do not divide by the degrees; not launched (a process group is
            missing although the GPUs are there).
    """
    import torch
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    device = next(transformer.parameters()).device
    problem = unavailable(cfg, device)
    if problem is not None:
        raise problem
    if not dist.is_initialized():
        raise RecipeError(f"parallel.enabled=True but this process is not one of {cfg.world_size} launched ranks "
                          "(torch.distributed is not initialized). Fix: " + LAUNCH_HINT.format(n=cfg.world_size))
    heads = transformer.config.num_attention_heads
    if heads % cfg.ulysses_degree:
        raise RecipeError(f"parallel.ulysses_degree={cfg.ulysses_degree}: the transformer has {heads} attention heads, "
                          "and Ulysses splits the heads evenly. Fix: a degree dividing the head count "
                          f"({[d for d in range(2, 9) if heads % d == 0]}).")
    if spec is not None:
        _check_sequences(spec, cfg.world_size)
    backend = CP_ATTENTION[cfg.attention]
    if backend != "native":
        transformer.set_attention_backend(backend)
    cp = ContextParallelConfig(ulysses_degree=cfg.ulysses_degree, ring_degree=cfg.ring_degree)
    if torch.accelerator.device_count() == 0:  # gloo on CPU: see the module docstring
        transformer._resolve_parallel_config = types.MethodType(_resolve_on_cpu, transformer)
    try:
        transformer.enable_parallelism(config=cp)
    finally:
        transformer.__dict__.pop("_resolve_parallel_config", None)
    return {"world_size": dist.get_world_size(), "rank": dist.get_rank(), "ulysses_degree": cfg.ulysses_degree,
            "ring_degree": cfg.ring_degree, "dist_backend": str(dist.get_backend()), "attention": backend,
            "device": str(device), "heads": heads}


def remove_parallel(transformer, backend_set: bool) -> None:
    """Undo apply_parallel: the `_cp_plan` hooks, the processors' and model's parallel config, the backend."""
    from diffusers.hooks.context_parallel import remove_context_parallel

    remove_context_parallel(transformer, transformer._cp_plan)
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = None
    transformer._parallel_config = None
    if backend_set:
        transformer.reset_attention_backend()


def _check_sequences(spec, n: int) -> None:
    for what, length in (("image tokens", spec.image_tokens), ("text tokens", spec.text_tokens)):
        if length % n:
            raise RecipeError(f"parallel over {n} ranks with {length} {what} ({spec.key()}): each rank takes an equal "
                              f"share of the sequence. Fix: a resolution / text length divisible by {n} (1024x1024: "
                              "4096 image tokens; schnell 256, dev 512 text tokens).")


def _resolve_on_cpu(self, config):
    """diffusers 0.42.1 ModelMixin._resolve_parallel_config with the device fixed to CPU (same calls otherwise)."""
    import torch
    import torch.distributed as dist
    from diffusers.models._modeling_parallel import ParallelConfig as DiffusersParallelConfig

    if not isinstance(config, DiffusersParallelConfig):
        config = DiffusersParallelConfig(context_parallel_config=config)
    cp = config.context_parallel_config
    mesh = cp.mesh or dist.device_mesh.init_device_mesh("cpu", cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
    config.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=mesh)
    self._parallel_config = config
    return config
