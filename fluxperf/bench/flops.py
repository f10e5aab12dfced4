"""FLOPs of one FLUX transformer step (a denoising forward), achieved TFLOP/s and MFU.

Formula (D = heads * head_dim = 3072, S = text + image tokens, a multiply-add = 2 FLOPs):
  * double-stream block (19), per token of each stream: Q,K,V (3 D^2) + attention out (D^2) + MLP D->4D->D
    (8 D^2) = 12 D^2 multiply-adds -> 24 D^2 FLOPs, over S_txt + S_img = S tokens;
  * single-stream block (38), per token: Q,K,V (3 D^2) + MLP in D->4D (4 D^2) + proj_out 5D->D (5 D^2)
    = 12 D^2 multiply-adds -> 24 D^2 FLOPs, over S tokens;
  * joint attention per block: QK^T and PV, 2 * (2 S^2 D) = 4 S^2 D FLOPs;
  * embedders and the output projection: x_embedder (in_channels->D on S_img), context_embedder
    (joint_attention_dim->D on S_txt), proj_out (D->in_channels on S_img); the per-block modulation
    Linears act on one token per image and are counted too (tiny).
At 1024x1024 with 512 text tokens (S = 4608): linear 59.5 + attention 14.9 = ~74.4 TFLOP per image;
schnell's 256 text tokens (S = 4352): ~69.5 TFLOP.

Example:
    >>> from fluxperf.model.shapes import ShapeSpec
    >>> round(step_flops(ShapeSpec("dev", 1024, 1024)).total / 1e12, 1)
    74.4
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fluxperf.model.configs import transformer_config
from fluxperf.model.shapes import ShapeSpec

MLP_RATIO = 4  # FLUX's feed-forward width is 4 * D


@dataclass(frozen=True)
class StepFlops:
    linear: float
    attention: float
    embed: float

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.embed

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def step_flops(spec: ShapeSpec, *, size: str = "full", config: dict | None = None) -> StepFlops:
    """FLOPs of one transformer forward for `spec` (batch included).

    Args:
        spec: the call shape (tokens from spec.image_tokens / spec.text_tokens).
        size: synthetic model size whose config to use ("full" = FLUX.1).
        config: a FluxTransformer2DModel config dict to use instead (e.g. a real checkpoint's).
    """
    cfg = config or transformer_config(spec.variant, size)
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    s_img, s_txt = spec.image_tokens, spec.text_tokens
    s = s_img + s_txt
    n_double, n_single = cfg["num_layers"], cfg["num_single_layers"]
    per_token = 2 * (3 + 1 + 2 * MLP_RATIO) * d * d  # double block, either stream
    single_per_token = 2 * (3 + MLP_RATIO + (1 + MLP_RATIO)) * d * d
    linear = n_double * per_token * s + n_single * single_per_token * s
    attention = (n_double + n_single) * 4 * s * s * d
    modulation = 2 * d * (n_double * 2 * 6 * d + n_single * 3 * d + 2 * d)  # AdaLayerNorm Linears on temb
    embed = 2 * (s_img * cfg["in_channels"] * d + s_txt * cfg["joint_attention_dim"] * d + s_img * d * cfg["in_channels"])
    b = spec.batch
    return StepFlops(linear=b * linear, attention=b * attention, embed=b * (embed + modulation))


def tflops(flops: float, ms: float) -> float:
    """Achieved TFLOP/s of `flops` done in `ms` milliseconds."""
    if not ms > 0:
        raise ValueError(f"ms={ms!r} must be > 0.")
    return flops / ms / 1e9


def mfu(flops: float, ms: float, peak_tflops: float) -> float:
    """Model FLOP utilization: achieved TFLOP/s / measured peak TFLOP/s (e.g. the calibration's bf16 GEMM)."""
    if not peak_tflops > 0:
        raise ValueError(f"peak_tflops={peak_tflops!r} must be > 0 (a measured GEMM rate).")
    return tflops(flops, ms) / peak_tflops
