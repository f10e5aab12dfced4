"""Synthetic pipelines: real diffusers classes, true architecture, seeded, finite, loadable."""

import numpy as np
import pytest
import torch

from fluxperf.model.build import build_pipeline, count_parameters, variant_of
from fluxperf.model.configs import transformer_config


def _image(pipe, seed=0, **kw):
    args = dict(height=64, width=64, num_inference_steps=2, max_sequence_length=32, output_type="np",
                generator=torch.Generator().manual_seed(seed))
    args.update(kw)
    return pipe(prompt="a photo of a cat", **args).images


def test_full_transformer_is_the_real_flux_architecture():
    from diffusers import FluxTransformer2DModel

    for variant, expected_linears in (("dev", 504), ("schnell", 502)):
        with torch.device("meta"):
            model = FluxTransformer2DModel(**transformer_config(variant, "full"))
        assert len(model.transformer_blocks) == 19 and len(model.single_transformer_blocks) == 38
        assert 11.8e9 < count_parameters(model) < 12.0e9
        assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == expected_linears


@pytest.mark.parametrize("variant, cls", [("schnell", "FluxPipeline"), ("dev", "FluxPipeline"),
                                          ("kontext", "FluxKontextPipeline")])
def test_builds_real_pipeline_classes(tiny_pipe_factory, variant, cls):
    pipe = tiny_pipe_factory(variant)
    assert type(pipe).__name__ == cls and variant_of(pipe) == variant
    assert pipe.transformer.config.guidance_embeds == (variant != "schnell")


def test_same_seed_same_weights_and_images_other_seed_differs(tiny_pipe_factory):
    a, b, c = tiny_pipe_factory(seed=0), tiny_pipe_factory(seed=0), tiny_pipe_factory(seed=1)
    for (na, pa), (_, pb) in zip(a.transformer.named_parameters(), b.transformer.named_parameters()):
        assert torch.equal(pa, pb), na
    assert not torch.equal(a.transformer.proj_out.weight, c.transformer.proj_out.weight)
    ia, ib = _image(a), _image(b)
    assert np.array_equal(ia, ib) and np.isfinite(ia).all() and ia.shape == (1, 64, 64, 3)
    assert ia.std() > 0.01  # not a blank image


def test_bf16_weights_are_the_rounded_fp32_weights(tiny_pipe_factory):
    fp32, bf16 = tiny_pipe_factory(dtype="float32"), tiny_pipe_factory(dtype="bfloat16")
    assert torch.equal(fp32.transformer.proj_out.weight.to(torch.bfloat16), bf16.transformer.proj_out.weight)


def test_kontext_runs_with_an_input_image(tiny_pipe_factory):
    from PIL import Image

    pipe = tiny_pipe_factory("kontext")
    img = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    out = _image(pipe, image=img, max_area=64 * 64, _auto_resize=False)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_save_pretrained_and_load_back_through_the_same_entry_point(tmp_path, tiny_pipe_factory):
    pipe = tiny_pipe_factory("dev")
    pipe.save_pretrained(tmp_path)
    loaded = build_pipeline("dev", checkpoint=str(tmp_path), dtype="float32")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "FluxPipeline"
    assert np.array_equal(_image(pipe), _image(loaded))


def test_unknown_variant_and_size_are_clear_errors():
    with pytest.raises(ValueError, match="variant='pro'"):
        build_pipeline("pro", "tiny")
    with pytest.raises(ValueError, match="size='huge'"):
        build_pipeline("dev", "huge")
    with pytest.raises(ValueError, match="dtype='int8'"):
        build_pipeline("dev", "tiny", dtype="int8")
