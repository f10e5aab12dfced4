"""Architecture configs of the synthetic FLUX.1 pipelines: `full` (the real FLUX.1 sizes) and `tiny` (CPU tests).

Only plain dicts live here, so tests can check them without building anything. The full transformer is the
real FLUX.1 config (19 double + 38 single blocks, 3072 wide, 11.9 B parameters); VAE, CLIP-L and T5-XXL use
the real configs of the FLUX.1 repositories.
"""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS = ("schnell", "dev", "kontext")
SIZES = ("full", "tiny")

# Per-variant sampling defaults (FLUX.1 model cards): steps, guidance, T5 sequence length.
VARIANT_DEFAULTS = {
    "schnell": {"steps": 4, "guidance": 0.0, "max_sequence_length": 256},
    "dev": {"steps": 28, "guidance": 3.5, "max_sequence_length": 512},
    "kontext": {"steps": 28, "guidance": 2.5, "max_sequence_length": 512},
}

_TRANSFORMER = {
    "full": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                 axes_dims_rope=(16, 56, 56)),
    "tiny": dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
}

_VAE_COMMON = dict(in_channels=3, out_channels=3, latent_channels=16, down_block_types=["DownEncoderBlock2D"] * 4,
                   up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.3611, shift_factor=0.1159,
                   use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
_VAE = {
    "full": dict(_VAE_COMMON, block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                 sample_size=1024, force_upcast=True),
    "tiny": dict(_VAE_COMMON, block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4,
                 sample_size=64, force_upcast=False),
}

_CLIP = {
    "full": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
                 bos_token_id=2, eos_token_id=3, pad_token_id=0),
    "tiny": dict(vocab_size=110, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, projection_dim=32, bos_token_id=2, eos_token_id=3, pad_token_id=0),
}

_T5 = {
    "full": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                 relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
                 is_gated_act=True, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0),
    "tiny": dict(vocab_size=110, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, pad_token_id=0,
                 eos_token_id=3, decoder_start_token_id=0),
}

# Scheduler configs: dev/kontext shift with resolution; schnell uses a fixed shift of 1 (its hub config).
_SCHEDULER = {
    "dynamic": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                    base_image_seq_len=256, max_image_seq_len=4096),
    "schnell": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
}


@dataclass(frozen=True)
class ModelDims:
    """The few numbers that input shapes depend on (see fluxperf.model.shapes)."""

    in_channels: int  # packed latent channels per token (16 latent channels x 2x2 patch)
    joint_attention_dim: int  # T5 hidden size
    pooled_projection_dim: int  # CLIP pooled size
    latent_channels: int
    vae_scale_factor: int  # 8: 2 ** (len(block_out_channels) - 1)
    guidance_embeds: bool
    num_attention_heads: int
    attention_head_dim: int


def _check(variant: str, size: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not a FLUX.1 variant. Fix: use one of {list(VARIANTS)}.")
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not a synthetic model size. Fix: use one of {list(SIZES)}.")


def transformer_config(variant: str, size: str) -> dict:
    _check(variant, size)
    return dict(_TRANSFORMER[size], guidance_embeds=variant != "schnell")


def vae_config(size: str) -> dict:
    _check("dev", size)
    return dict(_VAE[size])


def clip_config(size: str) -> dict:
    _check("dev", size)
    return dict(_CLIP[size])


def t5_config(size: str) -> dict:
    _check("dev", size)
    return dict(_T5[size])


def scheduler_config(variant: str) -> dict:
    _check(variant, "tiny")
    return dict(_SCHEDULER["schnell" if variant == "schnell" else "dynamic"])


def model_dims(variant: str, size: str) -> ModelDims:
    """Shape-relevant numbers of the synthetic (variant, size) model."""
    t, v = transformer_config(variant, size), vae_config(size)
    return ModelDims(
        in_channels=t["in_channels"], joint_attention_dim=t["joint_attention_dim"],
        pooled_projection_dim=t["pooled_projection_dim"], latent_channels=v["latent_channels"],
        vae_scale_factor=2 ** (len(v["block_out_channels"]) - 1), guidance_embeds=t["guidance_embeds"],
        num_attention_heads=t["num_attention_heads"], attention_head_dim=t["attention_head_dim"],
    )


def dims_of_pipeline(pipe) -> ModelDims:
    """ModelDims read from a built or loaded pipeline (real checkpoints included)."""
    t, v = pipe.transformer.config, pipe.vae.config
    return ModelDims(
        in_channels=t.in_channels, joint_attention_dim=t.joint_attention_dim,
        pooled_projection_dim=t.pooled_projection_dim, latent_channels=v.latent_channels,
        vae_scale_factor=2 ** (len(v.block_out_channels) - 1), guidance_embeds=bool(t.guidance_embeds),
        num_attention_heads=t.num_attention_heads, attention_head_dim=t.attention_head_dim,
    )
