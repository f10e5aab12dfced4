"""CPU tests of the attention custom ops: lazy registration, fakes, opcheck, torch.compile, output unpacking, fp8 math."""

import importlib.machinery
import json
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from fluxperf.steps.attention import aiter_ops, fp8, ops

OPS = {
    "fa3": (torch.ops.fluxperf.fa3, {}),
    "fa3_fp8": (torch.ops.fluxperf.fa3_fp8, {"scaled": False}),
    "fa3_fp8_scaled": (torch.ops.fluxperf.fa3_fp8, {"scaled": True}),
    "aiter_fp8": (torch.ops.fluxperf.aiter_fp8, {"scaled": False}),
    "aiter_fp8_scaled": (torch.ops.fluxperf.aiter_fp8, {"scaled": True}),
}


def _qkv(b=2, s=40, h=2, d=16, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, s, h, d, generator=g).to(dtype) for _ in range(3))


def _sdpa_fp32(q, k, v):
    return ops.sdpa_bshd(q.float(), k.float(), v.float())


# -- lazy registration ----------------------------------------------------------------------------------------
def test_import_is_light_and_ops_register_on_first_use():
    code = """
import json, sys
import fluxperf.steps.attention as A
heavy = sorted(m for m in sys.modules if m.split('.')[0] in
               ('flash_attn_interface', 'fa3_fwd_interface', 'aiter', 'torchao', 'cache_dit', 'diffusers'))
lazy = sorted(m for m in sys.modules if m in ('fluxperf.steps.attention.ops', 'fluxperf.steps.attention.aiter_ops',
                                              'fluxperf.steps.attention.processor'))
cuda_init = 'torch' in sys.modules and sys.modules['torch'].cuda.is_initialized()
A.fa3_fp8  # first use registers the ops
import torch
print(json.dumps({'heavy': heavy, 'lazy': lazy, 'cuda_init': cuda_init,
                  'registered': [hasattr(torch.ops.fluxperf, n) for n in ('fa3', 'fa3_fp8', 'aiter_fp8')]}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    facts = json.loads(res.stdout.strip().splitlines()[-1])
    assert facts["heavy"] == [], f"importing fluxperf.steps.attention imported {facts['heavy']}"
    assert facts["lazy"] == [], f"op/processor modules loaded at import: {facts['lazy']}"
    assert facts["cuda_init"] is False
    assert facts["registered"] == [True, True, False]  # aiter op registers with aiter_ops, not with ops
    assert ops.FA3_FP8_OP == "fluxperf::fa3_fp8" and aiter_ops.AITER_FP8_OP == "fluxperf::aiter_fp8"


def test_register_ops_returns_all_names():
    from fluxperf.steps.attention import register_ops

    names = register_ops()
    assert names == ("fluxperf::fa3", "fluxperf::fa3_fp8", "fluxperf::aiter_fp8")
    assert all(hasattr(torch.ops.fluxperf, n.split("::")[1]) for n in names)


# -- fakes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_fake_tensor_mode_shape_dtype_device(name, device):
    op, kwargs = OPS[name]
    with FakeTensorMode(allow_non_fake_inputs=False):
        q = torch.empty(2, 4608, 24, 128, dtype=torch.bfloat16, device=device)
        v = torch.empty(2, 4608, 24, 64, dtype=torch.bfloat16, device=device)  # D_v != D_qk
        out = op(q, q, v, None, **kwargs)
    assert tuple(out.shape) == (2, 4608, 24, 64)
    assert out.dtype == torch.bfloat16
    assert out.device.type == device
    assert out.is_contiguous()


@pytest.mark.parametrize("name", list(OPS))
def test_meta_tensors(name):
    op, kwargs = OPS[name]
    q = torch.empty(1, 4500, 24, 128, dtype=torch.float16, device="meta")
    out = op(q, q, q, 0.1, **kwargs)
    assert out.device.type == "meta" and tuple(out.shape) == (1, 4500, 24, 128)
    # fp8 ops always return bf16 (FA3's fp8 output dtype); bf16 FA3 keeps the input dtype
    assert out.dtype == (torch.float16 if name == "fa3" else torch.bfloat16)


# -- opcheck via the CPU reference kernels ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPS))
def test_opcheck_cpu_reference(name):
    op, kwargs = OPS[name]
    q, k, v = _qkv(b=2, s=24, h=2, d=16)
    result = torch.library.opcheck(op, (q, k, v), {"softmax_scale": 0.2, **kwargs})
    assert set(result.values()) == {"SUCCESS"}, result


# -- torch.compile --------------------------------------------------------------------------------------------
def test_compile_fullgraph_keeps_op_as_one_node():
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(q, k, v):
        return torch.ops.fluxperf.fa3_fp8(q * 1.0, k, v, None, True) + 1.0

    q, k, v = _qkv(b=2, s=16)
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend=capture)(q, k, v)
    assert len(graphs) == 1  # fullgraph=True would have raised on a graph break
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("fluxperf.fa3_fp8" in str(t) for t in targets) == 1
    assert torch.equal(out, f(q, k, v))


def test_compile_aot_eager_matches_eager():
    q, k, v = _qkv(b=2, s=16)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b, c: torch.ops.fluxperf.fa3(a, b, c, None), fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(q, k, v), torch.ops.fluxperf.fa3(q, k, v, None))


# -- unpacking FA3 results: the batch-2 `[0]` bug ---------------------------------------------------------------
def _stand_in_fa3(returns: str):
    """A stand-in FA3 module: emulates flash_attn_func on CPU (dequantize with the descales, SDPA in fp32)."""
    seen = {}

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, q_descale=None, k_descale=None, v_descale=None):
        seen.update(dtype=q.dtype, descales=[None if d is None else tuple(d.shape) for d in (q_descale, k_descale, v_descale)])
        qf, kf, vf = (fp8.dequantize(t, d) if t.dtype == torch.float8_e4m3fn else t.float()
                      for t, d in ((q, q_descale), (k, k_descale), (v, v_descale)))
        out = ops.sdpa_bshd(qf, kf, vf, softmax_scale).to(torch.bfloat16)
        lse = torch.zeros(q.shape[0], q.shape[2], q.shape[1])
        return out if returns == "tensor" else (out, lse)

    module = types.ModuleType("fa3_fwd_interface")
    module.flash_attn_func = flash_attn_func
    module.__spec__ = importlib.machinery.ModuleSpec("fa3_fwd_interface", None)
    return module, seen


@pytest.mark.parametrize("returns", ["tensor", "tuple"])
@pytest.mark.parametrize("scaled", [False, True])
def test_fa3_fp8_impl_batch2_tensor_or_tuple(returns, scaled):
    module, seen = _stand_in_fa3(returns)
    q, k, v = _qkv(b=2, s=33, h=3, d=16)
    out = ops.fa3_fp8_impl(q, k, v, None, scaled, module=module)
    assert tuple(out.shape) == (2, 33, 3, 16) and out.dtype == torch.bfloat16
    assert seen["dtype"] == torch.float8_e4m3fn
    assert seen["descales"] == ([(2, 3)] * 3 if scaled else [None] * 3)
    # every batch element is its own attention (a blind [0] would have returned element 0's (33, 3, 16) slab)
    for b in range(2):
        ref = _sdpa_fp32(q[b:b + 1], k[b:b + 1], v[b:b + 1])
        assert fp8.relative_error(out[b:b + 1], ref) < 0.08
    assert fp8.relative_error(out[1:], _sdpa_fp32(q[:1], k[:1], v[:1])) > 0.5


def test_blind_index_zero_would_take_batch_element_zero():
    module, _ = _stand_in_fa3("tensor")
    q, k, v = _qkv(b=2, s=8)
    raw = module.flash_attn_func(q, k, v)
    assert tuple(raw[0].shape) == (8, 2, 16)  # what flux-fast's `[0]` gave: batch element 0 only
    with pytest.raises(RuntimeError, match=r"shape \(8, 2, 16\), expected \(2, 8, 2, 16\)"):
        ops.unpack_output(raw[0], (2, 8, 2, 16), "fa3")
    assert ops.unpack_output(raw, (2, 8, 2, 16), "fa3") is raw


def test_unpack_output_rejects_bad_results():
    t = torch.zeros(2, 8, 2, 16)
    assert ops.unpack_output((t, torch.zeros(2, 2, 8)), (2, 8, 2, 16), "k") is t
    with pytest.raises(RuntimeError, match="first element should be the output"):
        ops.unpack_output((torch.zeros(2, 2, 8), t), (2, 8, 2, 16), "k")
    with pytest.raises(RuntimeError, match="returned NoneType"):
        ops.unpack_output(None, (2, 8, 2, 16), "k")


def test_fa3_bf16_impl_with_stand_in():
    module, seen = _stand_in_fa3("tuple")
    strides = []
    inner = module.flash_attn_func
    module.flash_attn_func = lambda q, k, v, **kw: strides.append(q.stride(-1)) or inner(q, k, v, **kw)
    q, k, v = _qkv(b=2, s=20)
    q_t = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, head_dim not unit-stride
    out = ops.fa3_impl(q_t, k, v, module=module)
    assert strides == [1]  # FA3 needs unit stride in head_dim
    assert seen["dtype"] == torch.bfloat16 and seen["descales"] == [None] * 3
    assert fp8.relative_error(out, _sdpa_fp32(q, k, v)) < 0.01


def test_aiter_impl_with_stand_in_per_tensor_descales():
    seen = {}

    def flash_attn_fp8_pertensor_func(q, k, v, q_descale, k_descale, v_descale, causal=False, softmax_scale=None):
        seen.update(dtype=q.dtype, descales=[(tuple(d.shape), d.dtype) for d in (q_descale, k_descale, v_descale)])
        return ops.sdpa_bshd(*(fp8.dequantize(t, d) for t, d in ((q, q_descale), (k, k_descale), (v, v_descale))),
                             softmax_scale).to(torch.bfloat16)

    module = types.SimpleNamespace(flash_attn_fp8_pertensor_func=flash_attn_fp8_pertensor_func,
                                   dtypes=types.SimpleNamespace(fp8=torch.float8_e4m3fnuz))
    q, k, v = _qkv(b=2, s=24)
    for scaled in (False, True):
        out = aiter_ops.aiter_fp8_impl(q, k, v, None, scaled, module=module)
        assert seen["dtype"] == torch.float8_e4m3fnuz
        assert seen["descales"] == [((1,), torch.float32)] * 3
        assert tuple(out.shape) == (2, 24, 2, 16) and fp8.relative_error(out, _sdpa_fp32(q, k, v)) < 0.08


# -- fp8 quantization and the reference kernels -------------------------------------------------------------------
def test_quantize_per_head_maps_amax_to_fp8_max():
    x = torch.randn(2, 64, 4, 16)
    x[1, :, 2] *= 1000.0  # one loud head must not squash the others
    x8, descale = fp8.quantize(x, "per_head", torch.float8_e4m3fn)
    assert x8.dtype == torch.float8_e4m3fn and x8.is_contiguous() and tuple(descale.shape) == (2, 4)
    assert torch.allclose(x8.float().abs().amax(dim=(1, 3)), torch.full((2, 4), 448.0))
    back = fp8.dequantize(x8, descale)
    assert fp8.relative_error(back, x) < 0.05


def test_quantize_gqa_groups_q_heads_and_zero_is_safe():
    x = torch.randn(1, 8, 6, 16)
    _, descale = fp8.quantize(x, "per_head", torch.float8_e4m3fn, kv_heads=2)
    assert tuple(descale.shape) == (1, 2)
    expected = x.abs().amax(dim=(1, 3)).reshape(1, 2, 3).amax(dim=2) / 448.0
    assert torch.allclose(descale, expected)
    z8, zd = fp8.quantize(torch.zeros(1, 4, 2, 8), "per_tensor", torch.float8_e4m3fn)
    assert torch.isfinite(fp8.dequantize(z8, zd)).all() and tuple(zd.shape) == (1,)
    with pytest.raises(ValueError, match="scaling='bogus'"):
        fp8.quantize(x, "bogus", torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="4-D"):
        fp8.quantize(x[0], "unscaled", torch.float8_e4m3fn)


def test_reference_fp8_error_band_matches_fa3_measurement():
    # FA3 fp8 (unscaled) measured 0.053 relative error on random normal inputs at (1, 4608, 24, 128) (DEVICE.md);
    # the emulation gives 0.054 there. A shorter sequence here: the band checks quantization really happens.
    q, k, v = _qkv(b=1, s=512, h=2, d=128, seed=1)
    ref = _sdpa_fp32(q, k, v)
    err = fp8.relative_error(torch.ops.fluxperf.fa3_fp8(q, k, v, None, False), ref)
    assert 0.02 < err < 0.08
    assert fp8.relative_error(torch.ops.fluxperf.fa3(q, k, v, None), ref) < 0.005
    plain = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert fp8.relative_error(plain, ref) < 0.005


# -- FA3 API drift: keyword names differ between builds ----------------------------------------------------------
def _emulate(seen, q, k, v, softmax_scale, descales):
    seen["descales"] = [None if d is None else tuple(d.shape) for d in descales]
    qf, kf, vf = (fp8.dequantize(t, d) if t.dtype == torch.float8_e4m3fn else t.float()
                  for t, d in zip((q, k, v), descales))
    return ops.sdpa_bshd(qf, kf, vf, softmax_scale).to(torch.bfloat16)


def _strict_fa3(names=("descale_q", "descale_k", "descale_v")):
    """A stand-in FA3 build whose flash_attn_func has a real signature (no **kwargs) taking the descales under
    `names` (None: none at all): an unknown keyword is a TypeError, as with a real build."""
    seen = {}
    if names == ("descale_q", "descale_k", "descale_v"):  # earlier flash-attention/hopper builds
        def flash_attn_func(q, k, v, softmax_scale=None, causal=False, descale_q=None, descale_k=None, descale_v=None):
            return _emulate(seen, q, k, v, softmax_scale, (descale_q, descale_k, descale_v))
    elif names == ("q_descale", "k_descale", "v_descale"):  # fa3-fwd, tokenspeed-fa3, current hopper
        def flash_attn_func(q, k, v, softmax_scale=None, causal=False, q_descale=None, k_descale=None, v_descale=None):
            return _emulate(seen, q, k, v, softmax_scale, (q_descale, k_descale, v_descale))
    else:  # a bf16-only build
        def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
            return _emulate(seen, q, k, v, softmax_scale, (None, None, None))
    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func = flash_attn_func
    return module, seen


@pytest.mark.parametrize("names", [("descale_q", "descale_k", "descale_v"), ("q_descale", "k_descale", "v_descale"),
                                   None], ids=["old-names", "current-names", "no-descales"])
def test_fa3_fp8_unscaled_passes_no_descales_to_any_build(names):
    module, seen = _strict_fa3(names)
    q, k, v = _qkv(b=2, s=24)
    out = ops.fa3_fp8_impl(q, k, v, None, False, module=module)  # before: TypeError on the q_descale keyword
    assert seen["descales"] == [None] * 3 and fp8.relative_error(out, _sdpa_fp32(q, k, v)) < 0.08
    out = ops.fa3_impl(q, k, v, module=module)
    assert fp8.relative_error(out, _sdpa_fp32(q, k, v)) < 0.01


@pytest.mark.parametrize("names", [("descale_q", "descale_k", "descale_v"), ("q_descale", "k_descale", "v_descale")])
def test_fa3_fp8_scaled_uses_the_builds_descale_names(names):
    module, seen = _strict_fa3(names)
    q, k, v = _qkv(b=2, s=24, h=2)
    out = ops.fa3_fp8_impl(q, k, v, None, True, module=module)
    assert seen["descales"] == [(2, 2)] * 3 and fp8.relative_error(out, _sdpa_fp32(q, k, v)) < 0.08


def test_fa3_api_reasons_name_module_and_build():
    from fluxperf.steps.attention.fa3_api import Fa3Api

    api = Fa3Api.of(_strict_fa3(None)[0])
    assert api.descales is None and api.reason(scaled=False) is None
    reason = api.reason(scaled=True)
    assert reason.startswith("flash_attn_interface.flash_attn_func (unknown build")
    assert "takes no fp8 descales" in reason and "fp8_scaling='unscaled'" in reason
    assert "(q, k, v, softmax_scale=None, causal=False)" in reason  # the signature it has
    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func = torch.add  # a builtin: nothing to inspect
    assert "no inspectable signature" in Fa3Api.of(module).reason(scaled=False)
    module.flash_attn_func = lambda q, k, v, **kw: q  # **kwargs: takes the current names
    assert Fa3Api.of(module).descales == ("q_descale", "k_descale", "v_descale")
