"""Measure a rung against the bf16 eager reference, and collect its engagement evidence.

Used by the GPU numerics tier (tests/gpu/) and usable on its own. Everything is on fixed inputs: seeded prompt
embeddings and initial noise, transformer inputs and VAE latents from fluxperf.model.shapes.

Engagement evidence (what a guard checks besides closeness):
    compiled_modules, graph_breaks, recompiles   torch.compile engaged, fullgraph, no recompiles over steps
    float8_count / float8_expected               every eligible Linear became float8 (int8_count for int8)
    attention_op_calls                           the custom attention op ran (profiler events per forward)
    vae_channels_last                            VAE weights really are channels_last
"""

from __future__ import annotations

from typing import Any

PROMPT_SEED, NOISE_SEED = 1234, 0


def fixed_inputs(pipe, spec_args) -> dict[str, Any]:
    """Seeded inputs for one forward, one VAE decode and one image of `pipe` (on its device/dtype), all from
    fluxperf.model.shapes: prompt embeddings (PROMPT_SEED), transformer inputs, VAE latents and noise (NOISE_SEED)."""
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import (
        ShapeSpec,
        initial_latents,
        stand_in_prompt_embeds,
        transformer_inputs,
        vae_latents,
    )

    spec = ShapeSpec(*spec_args)
    dims = dims_of_pipeline(pipe)
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    return {
        "spec": spec,
        "transformer": transformer_inputs(spec, dims, device=device, dtype=dtype, seed=NOISE_SEED),
        "latents": vae_latents(spec, dims, device=device, dtype=dtype, seed=NOISE_SEED),
        **stand_in_prompt_embeds(spec, dims, seed=PROMPT_SEED, device=device, dtype=dtype),
        "noise": initial_latents(spec, dims, NOISE_SEED, device=device, dtype=dtype),
    }


def image_of(pipe, inputs: dict, steps: int = 4):
    """The pipeline's image (HxWx3 float in [0, 1], numpy) on the fixed inputs."""
    import torch

    spec = inputs["spec"]
    with torch.inference_mode():
        out = pipe(prompt_embeds=inputs["prompt_embeds"].to(pipe.transformer.dtype),
                   pooled_prompt_embeds=inputs["pooled_prompt_embeds"].to(pipe.transformer.dtype),
                   latents=inputs["noise"].to(pipe.transformer.dtype), height=spec.height, width=spec.width,
                   num_inference_steps=steps, guidance_scale=0.0, max_sequence_length=spec.text_tokens,
                   output_type="np", generator=torch.Generator("cpu").manual_seed(NOISE_SEED))
    return out.images[0]


def measure_rung(name: str, reference: dict, *, variant: str = "schnell", size: str = "full") -> dict[str, Any]:
    """Build, apply and measure one rung against `reference` (see tests/gpu/conftest.py for its keys), through
    fluxperf.measure.runner.prepared: the pipeline is freed (and dynamo reset) when this returns or raises."""
    from fluxperf.ladder import recipe_from
    from fluxperf.measure.runner import prepared

    recipe = recipe_from(name)
    with prepared(variant, size, recipe, device="cuda", spec=reference["inputs"]["spec"], steps=4) as run:
        return _measure(name, recipe, run.pipe, run.stack, reference)


def _measure(name: str, recipe, pipe, stack, reference: dict) -> dict[str, Any]:
    """The measurements of measure_rung on the applied pipeline (a function of its own: its locals, which hold
    the pipeline, are gone before the protocol frees it)."""
    import torch

    from fluxperf.measure.metrics import compare_images, relative_error

    inputs = reference["inputs"]
    counters = _dynamo_counters()
    counters.clear()
    with torch.inference_mode():
        forward = pipe.transformer(**_cast(inputs["transformer"], pipe))[0].float()
        vae = pipe.vae.decode(inputs["latents"].to(pipe.vae.dtype), return_dict=False)[0].float()
    image = image_of(pipe, inputs)
    graphs_after_first = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):  # steps 2..n and a 2nd image: no recompiles
        image_again = image_of(pipe, inputs)
    attention = stack.step("attention")
    return {
        "rung": name, "applied": stack.to_dict(),
        "forward_rel_err": relative_error(forward, reference["forward"]),
        "vae_rel_err": relative_error(vae, reference["vae"]),
        "image": compare_images(image, reference["image"]),
        "image_repeatable": bool((image == image_again).all()),
        "graph_breaks": sum(counters["graph_break"].values()),
        "unique_graphs": graphs_after_first,
        "recompiles": counters["stats"]["unique_graphs"] - graphs_after_first,
        "compiled_modules": (stack.compile or {}).get("compiled_modules", 0),
        "float8_count": stack.float8_linear_count,
        "int8_count": (stack.step("quantize") or {}).get("int8_count", 0),
        "float8_expected": _eligible_linears(pipe.transformer) if recipe.quantize.enabled else 0,
        "attention": attention,
        "attention_op_calls": _op_calls_per_forward(pipe, inputs, (attention or {}).get("op")),
        "vae_channels_last": pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last),
        "fused_modules": (stack.step("fuse_qkv") or {}).get("fused_attention_modules", 0),
        "attention_modules": sum(type(m).__name__ == "FluxAttention" for m in pipe.transformer.modules()),
    }


def _cast(transformer_inputs: dict, pipe) -> dict:
    import torch

    dtype = pipe.transformer.dtype
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() and k not in
                ("img_ids", "txt_ids", "guidance") else v) for k, v in transformer_inputs.items()}


def _eligible_linears(module) -> int:
    """Linear layers torchao can convert (both dims multiples of 16), counted independently of torchao."""
    import torch

    return sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear)
               and m.in_features % 16 == 0 and m.out_features % 16 == 0)


def _op_calls_per_forward(pipe, inputs: dict, op_name: str | None) -> int:
    """How many times the attention custom op ran in one (compiled) forward, from profiler events."""
    if not op_name:
        return 0
    import torch
    from torch.profiler import ProfilerActivity, profile

    short = op_name.split("::")[-1]
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        pipe.transformer(**_cast(inputs["transformer"], pipe))
    return sum(1 for e in prof.events() if e.name == op_name or e.name.endswith(f"::{short}"))


def _dynamo_counters():
    from torch._dynamo.utils import counters

    return counters
