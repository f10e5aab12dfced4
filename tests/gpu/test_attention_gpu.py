"""GPU tests of the attention ops and processor (H100 + an FA3 build). Run: pytest -m gpu tests/gpu/test_attention_gpu.py

Numerics are judged two ways, both must hold:
  1. a named ceiling = MARGIN x the relative error measured on an H100 (DEVICE.md), and
  2. FlashAttention-3's own test style: kernel error <= FA3_STYLE_MULT x (error of a same-precision torch reference)
     + FLOOR, where the bf16 torch reference is SDPA in bf16 and the fp8 one is fp8.reference_fp8_attention
     (q, k, v and P rounded to fp8 exactly as the kernel does, math in fp32).
Errors: relative L2 vs SDPA on the same inputs upcast to fp32, over the whole output AND per batch element (a
kernel result indexed with a blind `[0]` at batch 2 fails the shape or the element-1 check).
"""

import pytest
import torch

from fluxperf.steps.attention import fp8, registry

CUDA = torch.cuda.is_available()
HIP = CUDA and torch.version.hip is not None

# Measured on an H100 (DEVICE.md), random normal inputs (1, 4608, 24, 128), relative L2 error vs fp32:
MEASURED_FP8_UNSCALED_REL_ERR = 0.053  # FA3 fp8, plain cast (the CPU emulation gives 0.054; per-head scaled 0.053)
MEASURED_BF16_REL_ERR = 0.0023  # SDPA cuDNN / flash and FA3 in bf16
MARGIN = 1.5  # head-room for other shapes/seeds; a real bug (wrong batch element, no descale) is >= 10x off
FP8_REL_ERR_MAX = MARGIN * MEASURED_FP8_UNSCALED_REL_ERR  # 0.0795
BF16_REL_ERR_MAX = MARGIN * MEASURED_BF16_REL_ERR  # 0.00345
FA3_STYLE_MULT = 2.0  # FA3's tests: error <= 2x the same-precision reference's error + a floor
FLOOR = 1e-3
SCALED_VS_UNSCALED_MAX = 1.1  # per-head scaling must not be worse than the plain cast beyond noise (CPU: 0.053 vs 0.054)
# Small FluxAttention-sized transformer (head_dim 128, 1 double + 1 single block), bf16 output vs the stock processor,
# measured with the CPU reference kernels: fp8 0.0043-0.0046, bf16 FA3 0.0030-0.0033. Ceilings ~3x that.
MODEL_FP8_REL_ERR_MAX = 0.015
MODEL_BF16_REL_ERR_MAX = 0.01

H, D = 24, 128  # FLUX heads x head_dim

pytestmark = [pytest.mark.gpu, pytest.mark.numerics,
              pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: run `pytest -m gpu` on the H100")]


def _fa3_reason() -> str | None:
    if not CUDA:
        return "no CUDA GPU"
    return registry.check("fa3_fp8", registry.target_for("cuda", torch.bfloat16, D))


needs_fa3 = pytest.mark.skipif(CUDA and _fa3_reason() is not None,
                               reason=f"FA3 cannot run here: {_fa3_reason() if CUDA else ''}")


@pytest.fixture(scope="module", autouse=True)
def _ops_registered():
    """The ops register lazily; tests that call torch.ops.fluxperf.* directly must not depend on test order
    (run alone, this file failed its opcheck tests with "'fluxperf' object has no attribute 'fa3_fp8'")."""
    from fluxperf.steps.attention import register_ops

    register_ops()


@pytest.fixture(autouse=True)
def _exact_fp32_matmul():
    """fp32 references must not use TF32."""
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(prev)


def _qkv(b, s, seed=0):
    g = torch.Generator("cuda").manual_seed(seed)
    return tuple(torch.randn(b, s, H, D, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))


def _sdpa_fp32(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fluxperf.steps.attention.ops import sdpa_bshd

    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return sdpa_bshd(q.float(), k.float(), v.float())


_CACHE: dict = {}


def _case(b, s):
    """Inputs and fp32 reference for (batch, seq), computed once per session."""
    if (b, s) not in _CACHE:
        _CACHE.clear()  # keep one case on the GPU at a time
        q, k, v = _qkv(b, s, seed=b * 10_000 + s)
        _CACHE[(b, s)] = (q, k, v, _sdpa_fp32(q, k, v))
    return _CACHE[(b, s)]


def _errors(out, ref):
    return fp8.relative_error(out, ref), [fp8.relative_error(out[i], ref[i]) for i in range(out.shape[0])]


# -- registry on this machine ---------------------------------------------------------------------------------
@needs_fa3
def test_registry_says_everything_nvidia_runs_here():
    avail = registry.available_backends(registry.target_for("cuda", torch.bfloat16, D, seq_len=4608))
    assert {n: r for n, r in avail.items() if n != "aiter_fp8"} == dict.fromkeys(
        ["sdpa", "cudnn", "flash", "fa3", "fa3_fp8"])
    assert avail["aiter_fp8"] is not None


@needs_fa3
@pytest.mark.fa3
def test_installed_fa3_build_signature_is_understood():
    """The installed build's flash_attn_func is inspected (FA3 API drift): every mode fluxperf uses can be called."""
    from fluxperf.steps.attention import ops
    from fluxperf.steps.attention.fa3_api import Fa3Api

    api = Fa3Api.of(ops.fa3_module())
    assert api.reason(scaled=False) is None and api.reason(scaled=True) is None, api
    assert api.descales is not None and api.softmax_scale, api


# -- opcheck on CUDA ------------------------------------------------------------------------------------------
@needs_fa3
@pytest.mark.fa3
@pytest.mark.parametrize("name, kwargs", [("fa3_fp8", {"scaled": False}), ("fa3_fp8", {"scaled": True}), ("fa3", {})])
def test_opcheck_cuda(name, kwargs):
    q, k, v = _qkv(2, 300)[0][:, :, :4], _qkv(2, 300, 1)[0][:, :, :4], _qkv(2, 300, 2)[0][:, :, :4]
    result = torch.library.opcheck(getattr(torch.ops.fluxperf, name), (q, k, v), {"softmax_scale": None, **kwargs})
    assert set(result.values()) == {"SUCCESS"}, result


# -- numerics vs SDPA -----------------------------------------------------------------------------------------
@needs_fa3
@pytest.mark.fa3
@pytest.mark.parametrize("seq", [4608, 4500])  # 4500: not a multiple of FA3's 128-row tiles
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kind", ["fa3_fp8_unscaled", "fa3_fp8_scaled", "fa3_bf16"])
def test_fa3_vs_sdpa(kind, batch, seq):
    q, k, v, ref = _case(batch, seq)
    if kind == "fa3_bf16":
        out = torch.ops.fluxperf.fa3(q, k, v, None)
        torch_ref = _errors(torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2), ref)[0]
        ceiling = BF16_REL_ERR_MAX
    else:
        scaled = kind == "fa3_fp8_scaled"
        out = torch.ops.fluxperf.fa3_fp8(q, k, v, None, scaled)
        emulated = torch.cat([fp8.reference_fp8_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], None,
                                                          "per_head" if scaled else "unscaled",
                                                          torch.float8_e4m3fn, torch.bfloat16) for i in range(batch)])
        torch_ref = _errors(emulated, ref)[0]
        ceiling = FP8_REL_ERR_MAX
    assert tuple(out.shape) == (batch, seq, H, D) and out.dtype == torch.bfloat16 and out.is_contiguous()
    err, per_element = _errors(out, ref)
    print(f"{kind} b{batch} s{seq}: rel err {err:.5f} per element {[round(e, 5) for e in per_element]}, "
          f"torch same-precision reference {torch_ref:.5f}")
    assert err <= ceiling, f"{kind}: {err:.5f} > {ceiling:.5f} (= {MARGIN} x measured)"
    assert max(per_element) <= ceiling, f"{kind}: a batch element is off: {per_element}"
    assert err <= FA3_STYLE_MULT * torch_ref + FLOOR, f"{kind}: {err:.5f} vs torch reference {torch_ref:.5f}"


@needs_fa3
@pytest.mark.fa3
def test_scaled_vs_unscaled_fp8():
    q, k, v, ref = _case(1, 4608)
    unscaled = fp8.relative_error(torch.ops.fluxperf.fa3_fp8(q, k, v, None, False), ref)
    scaled = fp8.relative_error(torch.ops.fluxperf.fa3_fp8(q, k, v, None, True), ref)
    print(f"fp8 unscaled {unscaled:.5f} scaled {scaled:.5f}")
    assert scaled <= SCALED_VS_UNSCALED_MAX * unscaled
    # v far outside e4m3's range (|v| > 448 for most entries): the plain cast clips it, per-head scaling does not
    loud_v = v * 1000
    loud_ref = _sdpa_fp32(q, k, loud_v)
    loud_scaled = fp8.relative_error(torch.ops.fluxperf.fa3_fp8(q, k, loud_v, None, True), loud_ref)
    loud_unscaled = fp8.relative_error(torch.ops.fluxperf.fa3_fp8(q, k, loud_v, None, False), loud_ref)
    print(f"v x 1000: fp8 unscaled {loud_unscaled:.5f} scaled {loud_scaled:.5f}")
    assert loud_scaled <= FP8_REL_ERR_MAX
    assert not loud_unscaled <= FP8_REL_ERR_MAX  # (NaN counts as failing too)


# -- processor on a FluxAttention-sized transformer ------------------------------------------------------------------
def _small_flux(device):
    from diffusers import FluxTransformer2DModel

    from fluxperf.model.build import seeded_init_
    from fluxperf.model.configs import ModelDims
    from fluxperf.model.shapes import ShapeSpec, transformer_inputs

    cfg = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=D,
               num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=False,
               axes_dims_rope=(16, 56, 56))
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**cfg).to(device=device, dtype=torch.bfloat16)
    seeded_init_(model, 0, "t")
    model.eval().requires_grad_(False)
    dims = ModelDims(64, 64, 32, 16, 8, False, 4, D)
    inputs = transformer_inputs(ShapeSpec("schnell", 512, 512, batch=2, text_len=64), dims, device=device,
                                dtype=torch.bfloat16)
    return model, inputs


@needs_fa3
@pytest.mark.fa3
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("backend, scaling, ceiling", [
    ("fa3_fp8", "unscaled", MODEL_FP8_REL_ERR_MAX), ("fa3_fp8", "per_head", MODEL_FP8_REL_ERR_MAX),
    ("fa3", "unscaled", MODEL_BF16_REL_ERR_MAX), ("cudnn", "unscaled", MODEL_BF16_REL_ERR_MAX),
    ("flash", "unscaled", MODEL_BF16_REL_ERR_MAX), ("sdpa", "unscaled", 0.0),
])
def test_processor_on_gpu(backend, scaling, ceiling, fused):
    from fluxperf.recipe import AttentionConfig
    from fluxperf.steps.attention import apply_attention, reset_attention

    model, inputs = _small_flux("cuda")
    if fused:
        model.fuse_qkv_projections()
    with torch.no_grad():
        reset_attention(model)
        stock = model(**inputs)[0]
        report = apply_attention(model, AttentionConfig(backend, scaling))
        out = model(**inputs)[0]
    assert report["backend"] == backend and report["fallback_reason"] is None and report["processors"] == 2
    err = fp8.relative_error(out, stock)
    print(f"{backend}/{scaling} fused={fused}: model rel err {err:.5f} ({report})")
    assert err <= ceiling
    assert max(fp8.relative_error(out[i], stock[i]) for i in range(2)) <= ceiling


# -- aiter (AMD) ------------------------------------------------------------------------------------------------
@pytest.mark.aiter
@pytest.mark.skipif(not HIP, reason="needs an AMD Instinct GPU (ROCm build of torch) with aiter; none here")
def test_aiter_fp8_vs_sdpa():
    reason = registry.check("aiter_fp8", registry.target_for("cuda", torch.bfloat16, D))
    if reason is not None:
        pytest.skip(f"aiter_fp8 cannot run: {reason}")
    q, k, v, ref = _case(2, 4500)
    for scaled in (False, True):
        out = torch.ops.fluxperf.aiter_fp8(q, k, v, None, scaled)
        err, per_element = _errors(out, ref)
        # provisional ceiling (FA3's, never measured on MI300): replace with a measured one
        assert err <= FP8_REL_ERR_MAX and max(per_element) <= FP8_REL_ERR_MAX
