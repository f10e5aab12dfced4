"""The test-only slowdown injection: off unless asked, validated, and it adds the promised work."""

from __future__ import annotations

import pytest

from fluxperf.bench.slowdown import ENV, extra_width, install_slowdown, slowdown_fraction
from fluxperf.model.shapes import ShapeSpec


def test_fraction_from_environment():
    assert slowdown_fraction({}) is None and slowdown_fraction({ENV: " "}) is None
    assert slowdown_fraction({ENV: "0.05"}) == 0.05
    for bad in ("fast", "0", "-0.1", "2", "nan"):
        with pytest.raises(ValueError, match=ENV):
            slowdown_fraction({ENV: bad})


def test_extra_width_adds_the_fraction_of_block_flops():
    d, s_img, s_txt = 3072, 4096, 256
    m = extra_width(0.05, d=d, image_tokens=s_img, text_tokens=s_txt)
    s = s_img + s_txt
    block = 24 * d * d * s + 4 * s * s * d
    assert 2 * s_img * d * m == pytest.approx(0.05 * block, rel=1e-3)


def test_hooks_run_extra_matmuls_and_keep_outputs(tiny_pipe_factory):
    import torch

    pipe = tiny_pipe_factory(dtype="bfloat16", text_encoders=False)
    t = pipe.transformer
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs

    spec = ShapeSpec("schnell", 64, 64)
    x = transformer_inputs(spec, dims_of_pipeline(pipe), dtype=torch.bfloat16)
    with torch.no_grad():
        ref = t(**x)[0]
        handles = install_slowdown(t, 0.5, spec)
        assert len(handles) == len(t.transformer_blocks) + len(t.single_transformer_blocks)
        calls = []
        orig = torch.Tensor.__matmul__

        def counting(a, b):
            calls.append(tuple(b.shape))
            return orig(a, b)

        torch.Tensor.__matmul__ = counting
        try:
            out = t(**x)[0]
        finally:
            torch.Tensor.__matmul__ = orig
        for h in handles:
            h.remove()
    assert len(calls) == len(handles)  # one injected matmul per block
    assert torch.equal(out, ref)  # the 1e-30-scaled dependency does not change bf16 values


def test_hook_traces_without_graph_breaks_under_fullgraph_compile(tiny_pipe_factory):
    """The perf rungs compile blocks with fullgraph=True: the injected hook must trace cleanly (eager backend)."""
    import torch

    pipe = tiny_pipe_factory(dtype="float32", text_encoders=False)
    block = pipe.transformer.transformer_blocks[0]
    spec = ShapeSpec("schnell", 64, 64)
    install_slowdown(pipe.transformer, 0.05, spec)
    d = block.norm1.linear.in_features
    h, e, temb = torch.randn(1, 16, d), torch.randn(1, 8, d), torch.randn(1, d)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    with torch.no_grad():
        enc, hid = compiled(hidden_states=h, encoder_hidden_states=e, temb=temb)
        ref_enc, ref_hid = block(hidden_states=h, encoder_hidden_states=e, temb=temb)
    assert torch.allclose(hid, ref_hid) and torch.allclose(enc, ref_enc)
