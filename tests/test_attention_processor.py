"""CPU tests of FluxperfAttnProcessor on the tiny FLUX transformers (schnell, kontext), fused QKV, batch 2."""

import functools

import pytest
import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from torch.nn.attention import SDPBackend

from fluxperf.model.build import build_pipeline
from fluxperf.model.configs import dims_of_pipeline
from fluxperf.model.shapes import ShapeSpec, transformer_inputs
from fluxperf.recipe import AttentionConfig
from fluxperf.steps.attention import apply_attention, fp8, ops, registry, reset_attention
from fluxperf.steps.attention.processor import FluxperfAttnProcessor, make_kernel, restricted_sdpa_attention

# Tiny transformer (3 attention layers, head_dim 16), random inputs, relative error of the output vs the stock processor,
# measured for schnell/kontext x batch 1/2 x fused or not: fp8 ops via their CPU reference kernels (fa3_fp8 unscaled or
# per-head, aiter per-tensor) 0.0038-0.0052 in float32 and 0.0067-0.0076 in bf16; the bf16 fa3 reference 0.0 in float32,
# 0.0033-0.0035 in bf16. Tolerances: ~2.5x the largest measured value.
TINY_FP8_REL_TOL = 0.02
TINY_BF16_REL_TOL = 0.009


def _setup(variant, batch, fused=False, dtype="float32"):
    # float32 by default: bf16 matmuls are ~10x slower on this CPU; the fp8 ops take any float input
    pipe = build_pipeline(variant, "tiny", dtype=dtype, text_encoders=False)
    transformer = pipe.transformer
    if fused:
        transformer.fuse_qkv_projections()
    spec = ShapeSpec(variant, 64, 64, batch=batch, text_len=32)
    return transformer, transformer_inputs(spec, dims_of_pipeline(pipe), dtype=getattr(torch, dtype))


@pytest.fixture(scope="module")
def schnell_b2():
    return _setup("schnell", 2)


@pytest.fixture(scope="module")
def kontext_b2():
    return _setup("kontext", 2)


@pytest.fixture(scope="module")
def kontext_b2_bf16():
    return _setup("kontext", 2, dtype="bfloat16")


def _run(transformer, inputs, processor=None):
    if processor is None:
        transformer.set_attn_processor(FluxAttnProcessor())
    else:
        transformer.set_attn_processor(processor)
    with torch.no_grad():
        return transformer(**inputs)[0]


@pytest.mark.parametrize("variant, batch, fused, dtype", [
    ("schnell", 1, False, "float32"), ("schnell", 2, False, "float32"), ("schnell", 2, True, "float32"),
    ("kontext", 2, False, "float32"), ("kontext", 2, True, "float32"), ("kontext", 2, True, "bfloat16"),
])
def test_sdpa_processor_equals_stock_exactly(variant, batch, fused, dtype):
    transformer, inputs = _setup(variant, batch, fused, dtype)
    if variant == "kontext":  # Kontext: the conditioning image doubles the image tokens
        assert inputs["hidden_states"].shape[1] == 2 * (64 // 16) ** 2
    assert all(m.fused_projections == fused for m in transformer.modules() if hasattr(m, "fused_projections"))
    stock = _run(transformer, inputs)
    ours = _run(transformer, inputs, FluxperfAttnProcessor("sdpa"))
    assert torch.equal(stock, ours)


@pytest.mark.parametrize("backend, scaling, tol", [
    ("fa3_fp8", "unscaled", TINY_FP8_REL_TOL), ("fa3_fp8", "per_head", TINY_FP8_REL_TOL),
    ("aiter_fp8", "per_head", TINY_FP8_REL_TOL), ("fa3", "unscaled", TINY_BF16_REL_TOL),
])
@pytest.mark.parametrize("case", ["schnell_b2", "kontext_b2"])
def test_op_backends_dispatch_to_reference_kernels(case, backend, scaling, tol, request, monkeypatch):
    transformer, inputs = request.getfixturevalue(case)
    calls = []
    real_fp8, real_sdpa = fp8.reference_fp8_attention, ops.sdpa_bshd
    monkeypatch.setattr(fp8, "reference_fp8_attention", lambda *a: calls.append(a[4]) or real_fp8(*a))
    monkeypatch.setattr(ops, "sdpa_bshd", lambda *a: calls.append("fa3-reference") or real_sdpa(*a))
    stock = _run(transformer, inputs)
    out = _run(transformer, inputs, FluxperfAttnProcessor(backend, scaling))
    err = fp8.relative_error(out, stock)
    assert err < tol, f"{backend}/{scaling}: relative error {err:.4f} vs SDPA, tolerance {tol}"
    expected = {"fa3_fp8": scaling, "aiter_fp8": "per_tensor", "fa3": "fa3-reference"}[backend]
    assert calls == [expected] * 3  # 3 attention layers, each through the op's CPU kernel
    if backend != "fa3":
        assert err > 0  # fp8 rounding really happened


def test_fp8_processor_with_fused_qkv_batch2():
    transformer, inputs = _setup("schnell", 2, fused=True)
    err = fp8.relative_error(_run(transformer, inputs, FluxperfAttnProcessor("fa3_fp8")), _run(transformer, inputs))
    assert 0 < err < TINY_FP8_REL_TOL


def test_apply_then_run_uses_the_fp8_op(kontext_b2_bf16, monkeypatch):
    """The whole path: registry says yes (GPU facts pinned, a stand-in FA3 module with a current signature),
    processor installed, op runs (CPU reference)."""
    import types

    transformer, inputs = kontext_b2_bf16
    stock = _run(transformer, inputs)
    monkeypatch.setattr(registry, "_gpu_facts", lambda index: ((9, 0), False, None))
    monkeypatch.setattr(registry, "package_reason", lambda package: None)
    fa3 = types.ModuleType("fa3_fwd_interface")
    fa3.flash_attn_func = lambda q, k, v, softmax_scale=None, causal=False, q_descale=None, k_descale=None, \
        v_descale=None: q
    monkeypatch.setattr(ops, "fa3_module", lambda: fa3)
    report = apply_attention(transformer, AttentionConfig("fa3_fp8"), device="cuda")
    assert report["op"] == "fluxperf::fa3_fp8" and report["processors"] == 3
    with torch.no_grad():
        out = transformer(**inputs)[0]
    assert 0 < fp8.relative_error(out, stock) < TINY_FP8_REL_TOL
    assert reset_attention(transformer) == 3
    assert torch.equal(_run(transformer, inputs), stock)


def test_op_backends_refuse_masks():
    q = torch.randn(1, 8, 2, 16, dtype=torch.bfloat16)
    attend, _, _ = make_kernel("fa3_fp8")
    with pytest.raises(ValueError, match="'fa3_fp8' takes no attention mask.*backend='sdpa'"):
        attend(q, q, q, torch.ones(1, 8, dtype=torch.bool))


def test_sdpa_processor_passes_2d_masks_like_diffusers():
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    q, k, v = (torch.randn(2, 10, 2, 16) for _ in range(3))
    mask = torch.rand(2, 10) > 0.3
    mask[:, 0] = True
    attend, _, _ = make_kernel("sdpa")
    assert torch.equal(attend(q, k, v, mask), dispatch_attention_fn(q, k, v, attn_mask=mask))


def test_kernel_table():
    for name, sdp in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        attend, op, scaling = make_kernel(name, "per_head")
        assert isinstance(attend, functools.partial) and attend.keywords == {"backends": (sdp,)}
        assert (op, scaling) == (None, "none")
    assert make_kernel("fa3_fp8", "per_head")[1:] == ("fluxperf::fa3_fp8", "per_head")
    assert make_kernel("fa3", "unscaled")[1:] == ("fluxperf::fa3", "none")
    with pytest.raises(ValueError, match="fp8_scaling='per_row'"):
        make_kernel("fa3_fp8", "per_row")
    with pytest.raises(ValueError, match="'xformers' is not known"):
        make_kernel("xformers")


def test_compile_fullgraph_processor_fp8_op_is_one_node_per_layer(schnell_b2):
    transformer, inputs = schnell_b2
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager = _run(transformer, inputs, FluxperfAttnProcessor("fa3_fp8", "per_head"))
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(transformer, fullgraph=True, backend=capture)(**inputs)[0]
    assert len(graphs) == 1
    assert sum("fluxperf.fa3_fp8" in str(n.target) for n in graphs[0].graph.nodes) == 3
    assert torch.equal(compiled, eager)
    torch._dynamo.reset()


def test_restricted_sdpa_traces_fullgraph():
    # cudnn/flash kernels are unavailable on a CPU; the same code path restricted to MATH proves it traces.
    q, k, v = (torch.randn(2, 12, 2, 16) for _ in range(3))
    fn = functools.partial(restricted_sdpa_attention, backends=(SDPBackend.MATH,))
    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True, backend="eager")(q, k, v)
    assert torch.allclose(out, make_kernel("sdpa")[0](q, k, v), atol=1e-6)
    with pytest.raises(RuntimeError):  # the restriction is real: no cuDNN kernel on a CPU
        restricted_sdpa_attention(q, k, v, backends=(SDPBackend.CUDNN_ATTENTION,))
