"""float8 on Linear shapes torchao cannot run: such layers stay in bf16 and are reported; the forward never crashes.

The case (issue 13.8): pooled_projection_dim 24 with inner dim 128 gives a 24->128 Linear (skipped: not a multiple
of 16) and 128->128 Linears, which torchao 0.18's tensor-wise float8 converts and then fails on at the first
forward ("input_tensor must be 1x128 scaled"). torch 2.13 runs float8 _scaled_mm on CPU, so with the CUDA-only
hardware checks lifted these tests run torchao's real float8 forward here; tests/gpu/test_recipes_gpu.py runs the
same config through apply() on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from fluxperf.recipe import QuantizeConfig
from fluxperf.steps import quantize
from fluxperf.steps.quantize import float8_shape_reason


@pytest.mark.parametrize("shape, granularity, expected", [
    ((24, 128), "tensor", "24->128: torch._scaled_mm needs both to be multiples of 16"),
    ((128, 24), "row", "128->24"),
    ((128, 128), "tensor", "1x128 scaled"),
    ((128, 128), "row", None),
    ((128, 256), "tensor", None),
    ((256, 128), "tensor", None),
    ((3072, 3072), "tensor", None),  # FLUX.1's own Linears are unaffected
    ((64, 128), "tensor", None),
])
def test_shape_rule(shape, granularity, expected):
    reason = float8_shape_reason(*shape, granularity)
    assert reason is None if expected is None else expected in reason, reason


def awkward_transformer():
    """A FLUX transformer with inner dim 128 (2 heads x 64) and pooled_projection_dim 24, in bf16 on CPU."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                  attention_head_dim=64, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=24, axes_dims_rope=(8, 28, 28)).to(torch.bfloat16).eval()


def awkward_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(16, 3)
    ids[:, 1], ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    return {"hidden_states": torch.randn(1, 16, 64, generator=g).bfloat16(),
            "encoder_hidden_states": torch.randn(1, 8, 32, generator=g).bfloat16(),
            "pooled_projections": torch.randn(1, 24, generator=g).bfloat16(),
            "timestep": torch.tensor([0.5]), "img_ids": ids, "txt_ids": torch.zeros(8, 3)}


@pytest.fixture
def float8_on_cpu(monkeypatch):
    """Lift the CUDA-only hardware checks (fluxperf's and torchao's); torchao's float8 math itself runs on CPU."""
    pytest.importorskip("torchao", reason="needs torchao: pip install 'fluxperf[torchao]'")
    import torchao.quantization.quant_api as quant_api

    monkeypatch.setattr(quantize, "check_float8_hardware", lambda device: None)
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda *a, **k: None)
    quantize._probe.cache_clear()
    yield
    quantize._probe.cache_clear()


def _forward(model):
    with torch.no_grad():
        return model(**awkward_inputs(), return_dict=False)[0].float()


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_awkward_shapes_stay_bf16_are_reported_and_the_forward_runs(float8_on_cpu, granularity):
    model = awkward_transformer()
    ref = _forward(model)
    report = quantize.quantize_float8(model, QuantizeConfig(kind="float8", granularity=granularity))
    out = _forward(model)  # before: AssertionError: input_tensor must be 1x128 scaled (tensor-wise)
    assert torch.isfinite(out).all() and (out - ref).norm() / ref.norm() < 0.1
    reasons = report["skipped_reasons"]
    assert "24->128" in reasons["time_text_embed.text_embedder.linear_1"]
    square = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and
              (m.in_features, m.out_features) == (128, 128)]
    assert len(square) == 13
    if granularity == "tensor":
        assert all("1x128 scaled" in reasons[n] for n in square)
    else:
        assert not set(square) & set(reasons)
    assert report["float8_count"] == report["linear_count"] - len(report["skipped"]) > 0
    assert set(report["skipped"]) == set(reasons)


def test_the_probe_alone_catches_a_shape_the_rule_does_not_know(float8_on_cpu, monkeypatch):
    """The class, not the one shape: with the shape rule blind to 128x128, the probe still keeps those layers out."""
    monkeypatch.setattr(quantize, "float8_shape_reason", lambda i, o, g: None)
    model = awkward_transformer()
    report = quantize.quantize_float8(model, QuantizeConfig(kind="float8", granularity="tensor"))
    _forward(model)
    reasons = report["skipped_reasons"]
    assert reasons["transformer_blocks.0.attn.to_q"].startswith(
        "torchao's float8 forward fails on 128->128: AssertionError: input_tensor must be 1x128 scaled")
    # 24->128: the probe passes it (torchao skips it itself, the probe's forward runs in bf16); still reported
    assert reasons["time_text_embed.text_embedder.linear_1"] == "torchao left it unconverted"
