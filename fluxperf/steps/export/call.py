"""The calling convention of exported FLUX packages: example inputs, the modules that get exported, and the
adapters that let the unchanged pipeline call the packages.

Exported modules take positional tensors only and return one tensor, so a package's input spec is simple and
stable: the transformer takes TRANSFORMER_INPUTS (without `guidance` for schnell), the VAE decoder takes the
latents (B, 16, H/8, W/8). Example inputs come from fluxperf.model.shapes for the ShapeSpec — never hard-coded.

The adapters accept exactly what the pipelines pass (`transformer(hidden_states=..., ..., return_dict=False)`,
`vae.decode(latents, return_dict=False)`), refuse what a package cannot honour (another shape, LoRA scale in
joint_attention_kwargs, ControlNet residuals) with a clear error, cast to the package's dtypes, and return what
diffusers would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fluxperf.errors import FluxperfError
from fluxperf.model.shapes import transformer_inputs, vae_latents

TRANSFORMER_INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids",
                      "txt_ids", "guidance")


class ExportShapeError(FluxperfError, ValueError):
    """A call does not match the shapes (or arguments) an exported package was built for."""


@dataclass(frozen=True)
class ExampleInputs:
    """Positional example inputs of an exported module: names and tensors, in call order."""

    names: tuple[str, ...]
    args: tuple

    def signature(self) -> list[dict]:
        """[{"name", "shape", "dtype"}] — recorded in the package manifest."""
        return [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype).replace("torch.", "")}
                for n, a in zip(self.names, self.args)]


def transformer_example(spec, dims, *, device="cpu", dtype=None, seed: int = 0) -> ExampleInputs:
    """Positional inputs of TransformerExportModule for `spec` (from fluxperf.model.shapes.transformer_inputs).

    Args:
        spec: fluxperf.model.shapes.ShapeSpec.
        dims: fluxperf.model.configs.ModelDims (dims_of_pipeline(pipe) or model_dims(variant, size)).
        device, dtype: of the float inputs (position ids: as fluxperf.model.shapes builds them).

    Example:
        >>> from fluxperf.model.shapes import ShapeSpec
        >>> from fluxperf.model.configs import model_dims
        >>> ex = transformer_example(ShapeSpec("schnell", 512, 512), model_dims("schnell", "tiny"))
        >>> ex.names[-1], tuple(ex.args[0].shape)
        ('txt_ids', (1, 1024, 64))
    """
    kwargs = transformer_inputs(spec, dims, device=device, dtype=dtype, seed=seed)
    names = tuple(n for n in TRANSFORMER_INPUTS if n in kwargs)
    return ExampleInputs(names, tuple(kwargs[n] for n in names))


def vae_example(spec, dims, *, device="cpu", dtype=None, seed: int = 0) -> ExampleInputs:
    """The latents VaeDecodeExportModule takes for `spec` (from fluxperf.model.shapes.vae_latents)."""
    return ExampleInputs(("latents",), (vae_latents(spec, dims, device=device, dtype=dtype, seed=seed),))


class TransformerExportModule(torch.nn.Module):
    """FluxTransformer2DModel with positional tensor inputs and one tensor output (what gets exported).

    Calls the class's forward, not an instance override, so a model whose forward was replaced by an adapter
    still exports its own graph. Parameter names are "transformer.<name>".
    """

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                guidance=None):
        t = self.transformer
        return type(t).forward(t, hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                               pooled_projections=pooled_projections, timestep=timestep, img_ids=img_ids,
                               txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]


class VaeDecodeExportModule(torch.nn.Module):
    """AutoencoderKL.decode(latents) -> image tensor (what gets exported). Parameter names are "vae.<name>"."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return type(self.vae).decode(self.vae, latents, return_dict=False)[0]


# -- adapters --------------------------------------------------------------------------------------------
def _single(out):
    """A package returns its one output as a tensor (or, in some torch versions, a 1-element list)."""
    if isinstance(out, (list, tuple)):
        if len(out) != 1:
            raise FluxperfError(f"an exported FLUX module returned {len(out)} outputs, expected 1.")
        return out[0]
    return out


class _Adapter:
    def __init__(self, runner, example: ExampleInputs, spec, what: str, guard=None):
        self.runner, self.spec, self.what, self.guard = runner, spec, what, guard
        self.names = example.names
        self.expected = [(tuple(a.shape), a.dtype, a.device) for a in example.args]

    def run(self, args: list):
        """Call the runner, first making sure the package still computes with the module's current weights."""
        # guard.check() re-points the package at replaced weights (weights="user") or raises (other modes);
        # graphs captured before it hold the old addresses, so they are dropped and re-captured
        if self.guard is not None and self.guard.check() and hasattr(self.runner, "clear"):
            self.runner.clear()
        return _single(self.runner(*args))

    def conform(self, values: dict[str, Any]) -> list:
        """Check each input against the package's example and cast dtype/device; error on a shape mismatch."""
        out = []
        for name, (shape, dtype, device) in zip(self.names, self.expected):
            value = values.get(name)
            if value is None:
                raise ExportShapeError(f"{self.what}: input {name!r} is None but the package for {self.spec.key()} "
                                       f"takes a tensor of shape {shape}.")
            if tuple(value.shape) != shape:
                raise ExportShapeError(
                    f"{self.what}: input {name!r} has shape {tuple(value.shape)}, but the exported package was built "
                    f"for {shape} ({self.spec!r}); AOTInductor packages have static shapes. Fix: call the pipeline "
                    f"with height={self.spec.height}, width={self.spec.width} and batch {self.spec.batch}, or run "
                    "apply_export again with a ShapeSpec for this call.")
            # packages assume the dense layout they were traced with; the pipeline passes guidance.expand(B)
            out.append(value.to(device=device, dtype=dtype).contiguous())
        return out


class ExportedTransformerForward(_Adapter):
    """Stands in for FluxTransformer2DModel.forward (same signature) and runs the package."""

    def __init__(self, runner, example: ExampleInputs, spec, guard=None):
        super().__init__(runner, example, spec, "exported transformer", guard)

    def __call__(self, hidden_states=None, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                 img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None,
                 controlnet_block_samples=None, controlnet_single_block_samples=None, return_dict=True,
                 controlnet_blocks_repeat=False):
        if joint_attention_kwargs:
            raise ExportShapeError(
                f"exported transformer got joint_attention_kwargs={sorted(joint_attention_kwargs)}: the package was "
                "traced without them (e.g. a LoRA scale), so it cannot honour them. Fix: fuse LoRA weights before "
                "export, or do not export.")
        if controlnet_block_samples is not None or controlnet_single_block_samples is not None:
            raise ExportShapeError("exported transformer got ControlNet residuals; the package has no inputs for "
                                   "them. Fix: do not export ControlNet pipelines.")
        has_guidance = "guidance" in self.names
        if (guidance is not None) != has_guidance:
            raise ExportShapeError(
                f"exported transformer got guidance={'a tensor' if guidance is not None else None}, but the package "
                f"({self.spec.variant}) {'takes' if has_guidance else 'has no'} guidance. Fix: export for the "
                "variant of this pipeline.")
        # diffusers still accepts (deprecated) batched 3-D ids and uses the first element
        txt_ids = txt_ids[0] if txt_ids is not None and txt_ids.ndim == 3 else txt_ids
        img_ids = img_ids[0] if img_ids is not None and img_ids.ndim == 3 else img_ids
        values = dict(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                      pooled_projections=pooled_projections, timestep=timestep, img_ids=img_ids, txt_ids=txt_ids,
                      guidance=guidance)
        sample = self.run(self.conform(values))
        if not return_dict:
            return (sample,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)


class ExportedVaeDecode(_Adapter):
    """Stands in for AutoencoderKL.decode(z, return_dict=True, generator=None) and runs the package."""

    def __init__(self, runner, example: ExampleInputs, spec, guard=None):
        super().__init__(runner, example, spec, "exported VAE decoder", guard)

    def __call__(self, z, return_dict=True, generator=None):
        sample = self.run(self.conform({"latents": z}))
        if not return_dict:
            return (sample,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=sample)
