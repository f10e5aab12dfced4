"""Synthetic FLUX.1 pipelines with seeded random weights, and real checkpoints through the same entry point.

`build_pipeline("schnell", "full", device="cuda")` builds a real diffusers `FluxPipeline` of the true
architecture (11.9 B-parameter transformer, VAE, CLIP-L, T5-XXL) with random weights; `size="tiny"` builds a
few-layer version that runs on a CPU in seconds; `checkpoint="<path or hub id>"` loads real weights with
`from_pretrained` instead. Weights are a pure function of (seed, parameter name): the same seed gives
bit-identical weights and images on the same device.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path

from fluxperf.model import configs as mc
from fluxperf.model.tokenizers import make_tokenizer

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def torch_dtype(name):
    """'bfloat16' / 'bf16' / torch.bfloat16 -> torch.bfloat16, with a clear error otherwise."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"dtype={name!r} is not supported. Fix: use one of {sorted(set(_DTYPES.values()))}.")
    return getattr(torch, _DTYPES[name])


def build_pipeline(variant: str = "schnell", size: str = "tiny", *, seed: int = 0, device="cpu", dtype="bfloat16",
                   text_encoders: bool = True, checkpoint: str | None = None):
    """Build a FLUX.1 pipeline: synthetic (seeded random weights) or from a real checkpoint.

    Args:
        variant: "schnell" / "dev" (FluxPipeline) or "kontext" (FluxKontextPipeline).
        size: "full" (real FLUX.1 architecture) or "tiny" (a few layers, for CPU tests). Ignored for checkpoints.
        seed: weight seed.
        device: where the weights live (built there directly: no 48 GB fp32 detour through host memory).
        dtype: "float32", "bfloat16" or "float16".
        text_encoders: include CLIP and T5 (False: call the pipeline with prompt_embeds, see encode_prompt).
        checkpoint: a local path or hub id of a real FLUX.1 pipeline; loaded with from_pretrained.

    Example:
        >>> pipe = build_pipeline("schnell", "tiny")  # doctest: +SKIP
        >>> image = pipe("a cat", height=64, width=64, num_inference_steps=2).images[0]  # doctest: +SKIP
    """
    if checkpoint is not None:
        return load_pipeline(checkpoint, variant, device=device, dtype=dtype, text_encoders=text_encoders)
    mc._check(variant, size)
    dt = torch_dtype(dtype)
    components = {
        "transformer": _build_transformer(variant, size, seed, device, dt),
        "vae": _build_vae(size, seed, device, dt),
        "scheduler": _build_scheduler(variant),
    }
    components.update(_build_text_stack(size, seed, device, dt) if text_encoders else
                      {"text_encoder": None, "tokenizer": None, "text_encoder_2": None, "tokenizer_2": None})
    return pipeline_class(variant)(**components)


def load_pipeline(checkpoint: str, variant: str = "dev", *, device="cpu", dtype="bfloat16", text_encoders=True):
    """Load a real pipeline (local directory or hub id) with from_pretrained, as build_pipeline does.

    Raises:
        ValueError: `checkpoint` is neither a pipeline directory nor a hub id (checkpoint_problem), before any load.
    """
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise ValueError(f"checkpoint={checkpoint!r}: {problem}.")
    checkpoint = normalize_checkpoint(checkpoint)
    mc._check(variant, "full")
    kwargs = {"torch_dtype": torch_dtype(dtype)}
    if not text_encoders:
        kwargs.update(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe = pipeline_class(variant).from_pretrained(checkpoint, **kwargs)
    return pipe.to(device)


def _looks_local(text: str) -> bool:
    """A path rather than a hub id: absolute, ./ ../ ~ (or . / ..), or something that exists on disk."""
    return (os.path.isabs(text) or text in (".", "..") or text.startswith(("./", "../", "~", ".\\", "..\\"))
            or os.path.exists(os.path.expanduser(text)))


def normalize_checkpoint(checkpoint: str) -> str:
    """The text from_pretrained gets: a local path with `~` expanded; a hub id unchanged."""
    return os.path.expanduser(checkpoint) if _looks_local(checkpoint) else checkpoint


def checkpoint_problem(checkpoint: str) -> str | None:
    """None if `checkpoint` can be given to diffusers' from_pretrained, else the rule and the fix in words.

    A text that looks local (absolute, ./, ../, ~, or an existing path) must be a directory holding
    model_index.json (what DiffusionPipeline.save_pretrained writes); anything else is a Hugging Face hub id and must
    have its form ('name' or 'org/name': huggingface_hub.utils.validate_repo_id). Whether the hub has it is known only
    when it is fetched. The one check of `--checkpoint` for every command (and of load_pipeline).
    """
    if _looks_local(checkpoint):
        path = Path(checkpoint).expanduser()
        try:
            if not path.exists():
                return ("no such file or directory (a local path, so not a hub id). Fix: the directory a FLUX.1 "
                        "pipeline was saved or downloaded to, or a hub id such as black-forest-labs/FLUX.1-dev")
            if not path.is_dir():
                return "is a file, not a pipeline directory. Fix: give the directory that holds model_index.json"
            if not (path / "model_index.json").is_file():
                return ("the directory holds no model_index.json, so it is not a diffusers pipeline. Fix: the "
                        "directory a FLUX.1 pipeline was saved to (save_pretrained) or downloaded to "
                        "(huggingface-cli download black-forest-labs/FLUX.1-dev --local-dir DIR)")
        except OSError as exc:  # e.g. a name too long for the file system
            return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc}). Fix: give a pipeline directory"
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(checkpoint)
    except HFValidationError:  # its message names huggingface_hub's own arguments (repo_type): worded here
        return ("not an existing path, and not a hub id ('name' or 'org/name': letters, digits, '-', '_', '.'; "
                "no '--' or '..'; at most 96 characters). Fix: a hub id such as black-forest-labs/FLUX.1-dev, or a "
                "local directory (an absolute path or one starting with ./)")
    return None


def pipeline_class(variant: str):
    from diffusers import FluxKontextPipeline, FluxPipeline

    return FluxKontextPipeline if variant == "kontext" else FluxPipeline


def variant_of(pipe) -> str:
    """'kontext' for a FluxKontextPipeline, else 'dev' when the transformer has a guidance embedding, else 'schnell'."""
    from diffusers import FluxKontextPipeline

    if isinstance(pipe, FluxKontextPipeline):
        return "kontext"
    return "dev" if pipe.transformer.config.guidance_embeds else "schnell"


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- builders --------------------------------------------------------------------------------------------
def _build_transformer(variant, size, seed, device, dtype):
    from diffusers import FluxTransformer2DModel

    return _seeded(lambda: FluxTransformer2DModel(**mc.transformer_config(variant, size)), "transformer",
                   seed, device, dtype)


def _build_vae(size, seed, device, dtype):
    from diffusers import AutoencoderKL

    return _seeded(lambda: AutoencoderKL(**mc.vae_config(size)), "vae", seed, device, dtype)


def _build_scheduler(variant):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**mc.scheduler_config(variant))


def _build_text_stack(size, seed, device, dtype):
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_cfg, t5_cfg = mc.clip_config(size), mc.t5_config(size)
    return {
        "text_encoder": _seeded(lambda: CLIPTextModel(CLIPTextConfig(**clip_cfg)), "clip", seed, device, dtype),
        "tokenizer": make_tokenizer(clip_cfg["vocab_size"], clip_cfg["max_position_embeddings"], bos=True),
        "text_encoder_2": _seeded(lambda: T5EncoderModel(T5Config(**t5_cfg)), "t5", seed, device, dtype),
        "tokenizer_2": make_tokenizer(t5_cfg["vocab_size"], 512, bos=False),
    }


def _seeded(make, prefix: str, seed: int, device, dtype):
    """Construct on `device` (global RNG seeded, so construction is deterministic too), cast, seeded re-init, eval."""
    import torch

    with _fork_rng(seed), torch.device(device), quiet_diffusers():
        module = make()
        module = module.to(dtype=dtype)
    seeded_init_(module, seed, prefix)
    return module.eval().requires_grad_(False)


def seeded_init_(module, seed: int, prefix: str = "") -> None:
    """Re-initialize every parameter from (seed, prefix + name) alone, independent of construction order.

    Matrices and conv kernels ~ N(0, 1/fan_in) (keeps activations O(1) through 57 blocks); biases 0;
    other 1-D parameters (norm scales) keep their constructor value (1). Values are drawn in float32 and
    rounded to the parameter's dtype, so a bf16 model holds exactly the rounded weights of the fp32 one.
    """
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                gen = torch.Generator(device=param.device).manual_seed(_param_seed(seed, f"{prefix}.{name}"))
                fan_in = param[0].numel()
                values = torch.empty(param.shape, dtype=torch.float32, device=param.device)
                param.copy_(values.normal_(0.0, fan_in ** -0.5, generator=gen))
                del values
            elif name.endswith("bias"):
                param.zero_()


def _param_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


@contextlib.contextmanager
def quiet_diffusers():
    """Silence diffusers' "modules that should be kept in float32: []" notice while casting synthetic models."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


@contextlib.contextmanager
def _fork_rng(seed: int):
    """Seed the global RNGs for the duration, restoring their previous state afterwards."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
