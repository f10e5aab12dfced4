"""ONE source of input shapes and example inputs for a (variant, height, width, batch).

Export example inputs, CUDA-graph keys, tests and benchmarks all derive from `ShapeSpec`, never from
hard-coded 1024x1024 numbers.

Token counts: the VAE downsamples by 8 and the transformer packs 2x2 latent patches, so an HxW image has
(H/16)*(W/16) image tokens (4096 at 1024x1024). Kontext appends the conditioning image's tokens: by default the
conditioning image has the target's size (doubling the image sequence); `cond_height`/`cond_width` give another
size (the pipeline resizes the input image to about the target's area, keeping its aspect ratio, so a 4:3 input
for a square target gives a different token count). Text tokens: the T5 sequence length (256 schnell, 512
dev/kontext).

Example:
    >>> s = ShapeSpec("schnell", 1024, 1024)
    >>> s.image_tokens, s.text_tokens, s.attention_seq_len
    (4096, 256, 4352)
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxperf.model.configs import VARIANT_DEFAULTS, VARIANTS, ModelDims

PIXELS_PER_TOKEN = 16  # VAE /8, then 2x2 packing


@dataclass(frozen=True)
class ShapeSpec:
    """The shape of one generation call.

    Args:
        variant: "schnell", "dev" or "kontext".
        height, width: image size in pixels, multiples of 16.
        batch: images per call.
        text_len: T5 tokens (default: the variant's max_sequence_length).
        cond_height, cond_width: Kontext only: the conditioning image's size in pixels as the pipeline encodes it
            (multiples of 16; default: the target's).
    """

    variant: str
    height: int
    width: int
    batch: int = 1
    text_len: int | None = None
    cond_height: int | None = None
    cond_width: int | None = None

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not a FLUX.1 variant. Fix: use one of {list(VARIANTS)}.")
        self._check_conditioning()
        for name in ("height", "width", "cond_height", "cond_width"):
            value = getattr(self, name)
            if value is None and name.startswith("cond_"):  # not Kontext
                continue
            if not isinstance(value, int) or value <= 0 or value % PIXELS_PER_TOKEN:
                raise ValueError(
                    f"{name}={value!r}: FLUX needs a positive multiple of {PIXELS_PER_TOKEN} pixels "
                    f"(VAE factor 8 x 2x2 patches). Fix: round to e.g. {max(16, round(int(value or 0) / 16) * 16)}."
                )
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch={self.batch!r} must be an integer >= 1.")
        if self.text_len is None:
            object.__setattr__(self, "text_len", VARIANT_DEFAULTS[self.variant]["max_sequence_length"])
        if not isinstance(self.text_len, int) or self.text_len < 1:
            raise ValueError(f"text_len={self.text_len!r} must be an integer >= 1.")

    def _check_conditioning(self) -> None:
        """Kontext: default the conditioning size to the target's; other variants: refuse one."""
        given = (self.cond_height, self.cond_width)
        if self.variant != "kontext":
            if given != (None, None):
                raise ValueError(f"cond_height/cond_width={given} given for variant={self.variant!r}: only Kontext "
                                 "takes a conditioning image. Fix: drop them, or use variant='kontext'.")
            return
        if (self.cond_height is None) != (self.cond_width is None):
            raise ValueError(f"cond_height/cond_width={given}: give both or neither (neither: the target's size).")
        if self.cond_height is None:
            object.__setattr__(self, "cond_height", self.height)
            object.__setattr__(self, "cond_width", self.width)

    # -- token counts ---------------------------------------------------------------------------------
    @property
    def latent_hw(self) -> tuple[int, int]:
        """Packed latent grid of the generated image (H/16, W/16)."""
        return self.height // PIXELS_PER_TOKEN, self.width // PIXELS_PER_TOKEN

    @property
    def cond_latent_hw(self) -> tuple[int, int] | None:
        """Packed latent grid of Kontext's conditioning image, None for the other variants."""
        if self.variant != "kontext":
            return None
        return self.cond_height // PIXELS_PER_TOKEN, self.cond_width // PIXELS_PER_TOKEN

    @property
    def image_tokens(self) -> int:
        """Image tokens the transformer sees (Kontext: target + conditioning image)."""
        h, w = self.latent_hw
        cond = self.cond_latent_hw
        return h * w + (cond[0] * cond[1] if cond else 0)

    @property
    def text_tokens(self) -> int:
        return int(self.text_len)

    @property
    def attention_seq_len(self) -> int:
        """Joint attention sequence length: text + image tokens."""
        return self.text_tokens + self.image_tokens

    @property
    def guidance(self) -> bool:
        return self.variant != "schnell"

    def key(self) -> str:
        """A filesystem-safe id, e.g. 'schnell-1024x1024-b1-t256' (Kontext with another conditioning size:
        '...-c1184x880')."""
        key = f"{self.variant}-{self.height}x{self.width}-b{self.batch}-t{self.text_tokens}"
        cond = (self.cond_height, self.cond_width)
        return key if self.variant != "kontext" or cond == (self.height, self.width) else f"{key}-c{cond[0]}x{cond[1]}"

    # -- shapes ---------------------------------------------------------------------------------------
    def transformer_shapes(self, dims: ModelDims) -> dict[str, tuple[int, ...]]:
        """Shapes of FluxTransformer2DModel.forward's tensor arguments."""
        b, s_img, s_txt = self.batch, self.image_tokens, self.text_tokens
        shapes = {
            "hidden_states": (b, s_img, dims.in_channels),
            "encoder_hidden_states": (b, s_txt, dims.joint_attention_dim),
            "pooled_projections": (b, dims.pooled_projection_dim),
            "timestep": (b,),
            "img_ids": (s_img, 3),
            "txt_ids": (s_txt, 3),
        }
        if dims.guidance_embeds:
            shapes["guidance"] = (b,)
        return shapes

    def vae_latent_shape(self, dims: ModelDims) -> tuple[int, int, int, int]:
        """Shape of the latents the VAE decoder takes: (B, C, H/8, W/8)."""
        f = dims.vae_scale_factor
        return (self.batch, dims.latent_channels, self.height // f, self.width // f)


def image_ids(spec: ShapeSpec, device=None):
    """Position ids (S_img, 3) the FLUX pipelines build: (index, row, col); Kontext's second image has index 1."""
    import torch

    ids = _grid_ids(*spec.latent_hw)
    if spec.cond_latent_hw is not None:
        cond = _grid_ids(*spec.cond_latent_hw)
        cond[:, 0] = 1
        ids = torch.cat([ids, cond], dim=0)
    return ids.to(device)


def _grid_ids(h: int, w: int):
    """(h*w, 3) ids (0, row, col), row-major, float32."""
    import torch

    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


def transformer_inputs(spec: ShapeSpec, dims: ModelDims, *, device="cpu", dtype=None, seed: int = 0) -> dict:
    """Example kwargs for FluxTransformer2DModel.forward (return_dict=False added), seeded random values.

    Args:
        spec: the call shape.
        dims: model numbers (model_configs.model_dims or dims_of_pipeline).
        device, dtype: placement of the float tensors. Position ids stay float32; the pipelines pass them in
            the prompt dtype (bf16), which FluxPosEmbed upcasts, and bf16 holds every position below 256 exactly
            (1024² has 64 per side), so the rotary embeddings agree.
        seed: seed of the random values.

    Example:
        >>> from fluxperf.model.configs import model_dims
        >>> x = transformer_inputs(ShapeSpec("dev", 64, 64), model_dims("dev", "tiny"))
        >>> tuple(x["hidden_states"].shape)
        (1, 16, 64)
    """
    import torch

    dtype = dtype or torch.bfloat16
    g = torch.Generator("cpu").manual_seed(seed)
    shapes = spec.transformer_shapes(dims)

    def randn(shape):
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype)

    inputs = {
        "hidden_states": randn(shapes["hidden_states"]),
        "encoder_hidden_states": randn(shapes["encoder_hidden_states"]),
        "pooled_projections": randn(shapes["pooled_projections"]),
        # the pipeline passes t / 1000 in (0, 1]
        "timestep": torch.full(shapes["timestep"], 0.5, device=device, dtype=dtype),
        "img_ids": image_ids(spec, device),
        "txt_ids": torch.zeros(shapes["txt_ids"], device=device),
        "return_dict": False,
    }
    if dims.guidance_embeds:
        inputs["guidance"] = torch.full(shapes["guidance"], 3.5, device=device, dtype=torch.float32)
    return inputs


def vae_latents(spec: ShapeSpec, dims: ModelDims, *, device="cpu", dtype=None, seed: int = 0):
    """Seeded latents (B, C, H/8, W/8) for VAE decode."""
    import torch

    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(spec.vae_latent_shape(dims), generator=g).to(device=device, dtype=dtype or torch.bfloat16)


def initial_latents(spec: ShapeSpec, dims: ModelDims, seed: int = 0, *, device="cpu", dtype=None):
    """Packed initial noise (B, (H/16)*(W/16), in_channels) for a pipeline call's `latents=`.

    Drawn in float32 on the CPU, then moved to `device`/`dtype` (None: float32 kept), so every rung (fp32, bf16,
    ...) starts from the same noise up to rounding. Kontext's conditioning tokens come from its input image, not
    from here.
    """
    import torch

    h, w = spec.latent_hw
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((spec.batch, h * w, dims.in_channels), generator=g, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def stand_in_prompt_embeds(spec: ShapeSpec, dims: ModelDims, *, seed: int = 0, device="cpu", dtype=None) -> dict:
    """Seeded stand-ins for the text encoders' outputs, so a pipeline runs without CLIP and T5.

    Returns:
        {"prompt_embeds": (B, text_tokens, joint_attention_dim) (T5), "pooled_prompt_embeds":
        (B, pooled_projection_dim) (CLIP pooled)}: standard normal, drawn in that order from one CPU generator
        seeded with `seed` in float32, then moved to `device`/`dtype` (None: float32 kept).
    """
    import torch

    g = torch.Generator("cpu").manual_seed(seed)
    embeds = torch.randn((spec.batch, spec.text_tokens, dims.joint_attention_dim), generator=g)
    pooled = torch.randn((spec.batch, dims.pooled_projection_dim), generator=g)
    return {"prompt_embeds": embeds.to(device=device, dtype=dtype),
            "pooled_prompt_embeds": pooled.to(device=device, dtype=dtype)}
