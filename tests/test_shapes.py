"""One shapes function for every (variant, height, width, batch)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxperf.model.configs import model_dims
from fluxperf.model.shapes import ShapeSpec, image_ids, transformer_inputs, vae_latents


@pytest.mark.parametrize("variant, h, w, img, txt", [
    ("schnell", 1024, 1024, 4096, 256), ("dev", 1024, 1024, 4096, 512), ("kontext", 1024, 1024, 8192, 512),
    ("dev", 768, 1360, 48 * 85, 512), ("schnell", 512, 512, 1024, 256)])
def test_token_counts(variant, h, w, img, txt):
    s = ShapeSpec(variant, h, w)
    assert (s.image_tokens, s.text_tokens, s.attention_seq_len) == (img, txt, img + txt)


@pytest.mark.parametrize("bad", [{"height": 1000}, {"width": 0}, {"batch": 0}, {"variant": "pro"}])
def test_bad_shapes_are_refused_with_the_fix(bad):
    args = {"variant": "dev", "height": 1024, "width": 1024, **bad}
    with pytest.raises(ValueError) as info:
        ShapeSpec(**args)
    assert "Fix" in str(info.value) or "must be" in str(info.value)


@settings(max_examples=30, deadline=None)
@given(variant=st.sampled_from(["schnell", "dev", "kontext"]), h=st.integers(1, 8), w=st.integers(1, 8),
       batch=st.integers(1, 3))
def test_inputs_follow_the_spec(variant, h, w, batch):
    spec = ShapeSpec(variant, 16 * h, 16 * w, batch, text_len=8)
    dims = model_dims(variant, "tiny")
    x = transformer_inputs(spec, dims, dtype=torch.float32)
    for name, shape in spec.transformer_shapes(dims).items():
        assert tuple(x[name].shape) == shape, name
    assert ("guidance" in x) == (variant != "schnell")
    assert tuple(vae_latents(spec, dims).shape) == (batch, 16, 2 * h, 2 * w)


def test_image_ids_match_the_pipeline():
    from diffusers import FluxPipeline

    spec = ShapeSpec("dev", 64, 96)
    ref = FluxPipeline._prepare_latent_image_ids(1, 4, 6, "cpu", torch.float32)
    assert torch.equal(image_ids(spec), ref)
    k = image_ids(ShapeSpec("kontext", 64, 96))
    assert k.shape == (48, 3) and torch.equal(k[:24], ref) and (k[24:, 0] == 1).all()


def test_inputs_are_seeded():
    spec, dims = ShapeSpec("dev", 64, 64), model_dims("dev", "tiny")
    a, b = transformer_inputs(spec, dims, seed=3), transformer_inputs(spec, dims, seed=3)
    assert torch.equal(a["hidden_states"], b["hidden_states"])
    assert not torch.equal(a["hidden_states"], transformer_inputs(spec, dims, seed=4)["hidden_states"])


@pytest.mark.parametrize("bad, match", [
    ({"variant": "dev", "cond_height": 64, "cond_width": 64}, "only Kontext"),
    ({"variant": "kontext", "cond_height": 64}, "both or neither"),
    ({"variant": "kontext", "cond_height": 60, "cond_width": 64}, "multiple of 16"),
])
def test_conditioning_size_rules(bad, match):
    with pytest.raises(ValueError, match=match):
        ShapeSpec(**{"height": 64, "width": 64, **bad})


def test_kontext_conditioning_of_another_size():
    same = ShapeSpec("kontext", 64, 64)
    other = ShapeSpec("kontext", 64, 64, cond_height=48, cond_width=80)
    assert same == ShapeSpec("kontext", 64, 64, cond_height=64, cond_width=64) and same.key() == "kontext-64x64-b1-t512"
    assert other.image_tokens == 16 + 3 * 5 and other.key() == "kontext-64x64-b1-t512-c48x80"
    assert other.key() != same.key()  # export packages / CUDA graphs of the two shapes never collide
    ids = image_ids(other)
    assert ids.shape == (31, 3) and (ids[16:, 0] == 1).all() and ids[16:, 1].max() == 2 and ids[16:, 2].max() == 4


def test_kontext_pipeline_sees_the_conditioning_tokens_the_spec_predicts():
    """The real FluxKontextPipeline with an 80x48 input image for a 64x64 target: the transformer receives exactly
    the hidden-state shape and position ids of ShapeSpec(..., cond_height=48, cond_width=80)."""
    import numpy as np
    from PIL import Image

    from fluxperf.model.build import build_pipeline

    pipe = build_pipeline("kontext", "tiny", text_encoders=False, dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    seen = {}

    def record(module, args, kwargs):
        seen.setdefault("hidden_states", kwargs["hidden_states"].shape)
        seen.setdefault("img_ids", kwargs["img_ids"].clone())

    pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (48, 80, 3), dtype=np.uint8))  # H=48, W=80
    pipe(image=image, height=64, width=64, num_inference_steps=1, guidance_scale=3.5, max_area=64 * 64,
         _auto_resize=False, prompt_embeds=torch.randn(1, 16, 32, generator=g),
         pooled_prompt_embeds=torch.randn(1, 32, generator=g), output_type="np")
    spec = ShapeSpec("kontext", 64, 64, text_len=16, cond_height=48, cond_width=80)
    dims = model_dims("kontext", "tiny")
    assert tuple(seen["hidden_states"]) == spec.transformer_shapes(dims)["hidden_states"]
    assert torch.equal(seen["img_ids"].float(), image_ids(spec))
