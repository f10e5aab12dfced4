"""CPU tests of the attention backend registry: constraint checks, error messages, fallback recording."""

import importlib.machinery
import sys
import types

import pytest
import torch

from fluxperf import optional
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.model.build import build_pipeline
from fluxperf.recipe import AttentionBackendName, AttentionConfig
from fluxperf.steps.attention import apply_attention, available_backends, check_backend, registry

H100 = registry.Target("cuda", "bfloat16", 128, seq_len=4608, capability=(9, 0))
MI300 = registry.Target("cuda", "bfloat16", 128, capability=(9, 4), hip=True, arch="gfx942:sramecc+:xnack-")


@pytest.fixture
def fake_fa3(monkeypatch):
    """Pretend a FlashAttention-3 build (module fa3_fwd_interface) is installed; caches cleared before and after."""
    module = types.ModuleType("fa3_fwd_interface")
    module.__spec__ = importlib.machinery.ModuleSpec("fa3_fwd_interface", None)
    module.flash_attn_func = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", module)
    monkeypatch.delitem(sys.modules, "flash_attn_interface", raising=False)
    _clear_caches()
    yield module
    monkeypatch.delitem(sys.modules, "fa3_fwd_interface", raising=False)
    _clear_caches()


def _clear_caches():
    from fluxperf.steps.attention import ops

    optional.find_module.cache_clear()
    registry.package_reason.cache_clear()
    ops.fa3_module.cache_clear()


def test_every_backend_name_has_a_spec():
    assert set(registry.SPECS) == set(AttentionBackendName.values())
    assert registry.spec("fa3_fp8").op == "fluxperf::fa3_fp8"
    with pytest.raises(ValueError, match=r"'nope' is not known.*fa3_fp8"):
        registry.spec("nope")


def test_available_backends_on_cpu_target():
    avail = available_backends(registry.Target("cpu", "bfloat16", 128))
    assert set(avail) == set(AttentionBackendName.values())
    assert avail["sdpa"] is None
    for name in ("cudnn", "flash", "fa3", "fa3_fp8"):
        assert avail[name] == f"device 'cpu': {name} runs on CUDA GPUs only"
    assert "AMD Instinct" in avail["aiter_fp8"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only default target")
def test_available_backends_default_is_this_machine():
    assert available_backends() == available_backends(registry.Target("cpu", "bfloat16", 128))


@pytest.mark.parametrize("name, target, expected", [
    ("fa3_fp8", registry.Target("cuda", "bfloat16", 128, capability=(8, 0)), "sm80: FlashAttention-3 runs on sm90"),
    ("fa3", registry.Target("cuda", "bfloat16", 128, capability=(10, 0)), "sm100: FlashAttention-3 runs on sm90"),
    ("fa3_fp8", registry.Target("cuda", "float32", 128, capability=(9, 0)), "dtype float32: fa3_fp8 takes"),
    ("fa3", registry.Target("cuda", "bfloat16", 300, capability=(9, 0)), "head_dim=300: fa3 needs a multiple of 8"),
    ("fa3", registry.Target("cuda", "bfloat16", 0, capability=(9, 0)), "head_dim=0: must be a positive"),
    ("fa3_fp8", registry.Target("cuda", "bfloat16", 128, seq_len=0, capability=(9, 0)), "seq_len=0"),
    ("fa3_fp8", registry.Target("cuda", "bfloat16", 128), "no CUDA device is visible"),
    ("fa3_fp8", MI300, "needs an NVIDIA GPU, this is a ROCm"),
    ("cudnn", registry.Target("cuda", "bfloat16", 128, capability=(7, 5)), "(7, 5): cudnn needs sm80"),
    ("flash", registry.Target("cuda", "float32", 64, capability=(9, 0)), "dtype float32: flash takes"),
    ("aiter_fp8", H100, "(not ROCm): aiter_fp8 runs on AMD Instinct"),
    ("aiter_fp8", registry.Target("cuda", "bfloat16", 128, hip=True, arch="gfx90a"), "GPU arch gfx90a"),
    ("aiter_fp8", MI300, "aiter is not installed"),
    ("sdpa", registry.Target("cpu", "float32", 64), None),
    ("cudnn", H100, None),
    ("flash", registry.Target("cuda", "float16", 64, capability=(8, 6)), None),
])
def test_constraint_checks(name, target, expected):
    reason = check_backend(name, target)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason


def test_fa3_on_h100_needs_the_package(fake_fa3, monkeypatch):
    assert check_backend("fa3_fp8", H100) is None
    monkeypatch.delitem(sys.modules, "fa3_fwd_interface")
    _clear_caches()
    reason = check_backend("fa3_fp8", H100)
    assert "FlashAttention-3 is not installed" in reason and "fa3_fwd_interface" in reason


def test_package_probe_is_cached(fake_fa3):
    registry.package_reason.cache_clear()
    for _ in range(3):
        check_backend("fa3", H100)
    info = registry.package_reason.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_broken_build_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    # an FA3 build for another torch/CUDA: found by find_spec, but its import fails loading the extension
    (tmp_path / "fa3_fwd_interface.py").write_text("raise OSError('libcudart.so.13: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn_interface", raising=False)
    _clear_caches()
    try:
        reason = check_backend("fa3", H100)
    finally:
        _clear_caches()
    assert reason == ("module 'fa3_fwd_interface' is installed but failed to import: "
                      "OSError: libcudart.so.13: cannot open shared object file")


def test_unavailable_error_names_backend_reason_and_hint():
    err = registry.unavailable("fa3_fp8", "compute capability sm80: FlashAttention-3 runs on sm90 (Hopper) only")
    assert isinstance(err, UnavailableError) and isinstance(err, RuntimeError)
    msg = str(err)
    assert "attention backend 'fa3_fp8'" in msg and "sm80" in msg
    assert "fa3-fwd" in msg and "tokenspeed-fa3" in msg  # install hint
    assert "attention.fallback='sdpa'" in msg


def test_target_for_cpu_and_cuda_without_gpu():
    t = registry.target_for("cpu", torch.bfloat16, 128, seq_len=4608)
    assert t == registry.Target("cpu", "bfloat16", 128, 4608, None, False, None)
    if not torch.cuda.is_available():
        t = registry.target_for("cuda", torch.bfloat16, 128)
        assert t.device_type == "cuda" and t.capability is None
        assert "no CUDA device is visible" in check_backend("cudnn", t)


# -- apply_attention: raise or fall back, recorded ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_transformer():
    return build_pipeline("schnell", "tiny", dtype="bfloat16", text_encoders=False).transformer


def test_apply_raises_with_reason_and_hint(tiny_transformer):
    with pytest.raises(UnavailableError) as info:
        apply_attention(tiny_transformer, AttentionConfig("fa3_fp8"))
    msg = str(info.value)
    assert "'fa3_fp8'" in msg and "device 'cpu'" in msg and "fa3-fwd" in msg


def test_apply_falls_back_only_when_asked_and_records_it(tiny_transformer):
    from fluxperf.steps.attention.processor import FluxperfAttnProcessor

    report = apply_attention(tiny_transformer, AttentionConfig("fa3_fp8", "per_head", fallback="sdpa"))
    assert report["requested"] == "fa3_fp8" and report["backend"] == "sdpa"
    assert report["fallback_reason"] == "device 'cpu': fa3_fp8 runs on CUDA GPUs only"
    assert report["fp8_scaling"] == "none" and report["op"] is None and report["processors"] == 3
    procs = set(map(repr, tiny_transformer.attn_processors.values()))
    assert procs == {repr(FluxperfAttnProcessor("sdpa"))}


def test_apply_checks_the_override_device(tiny_transformer, fake_fa3, monkeypatch):
    monkeypatch.setattr(registry, "_gpu_facts", lambda index: ((9, 0), False, None))
    report = apply_attention(tiny_transformer, AttentionConfig("fa3_fp8", "per_head"), device="cuda")
    assert report == {
        "requested": "fa3_fp8", "backend": "fa3_fp8", "fallback_reason": None, "fp8_scaling": "per_head",
        "processors": 3, "op": "fluxperf::fa3_fp8", "device": "cuda", "dtype": "bfloat16", "head_dim": 16,
        "fa3_module": "fa3_fwd_interface", "fa3_build": "unknown build (not from a distribution)",
    }
    monkeypatch.setattr(registry, "_gpu_facts", lambda index: ((8, 0), False, None))  # an A100: no FA3
    report = apply_attention(tiny_transformer, AttentionConfig("fa3_fp8", fallback="sdpa"), device="cuda")
    assert report["backend"] == "sdpa" and "sm80" in report["fallback_reason"]


def test_apply_aiter_reports_per_tensor_scaling(tiny_transformer, monkeypatch):
    monkeypatch.setattr(registry, "_gpu_facts", lambda index: ((9, 4), True, "gfx942"))
    monkeypatch.setattr(registry, "package_reason", lambda package: None)
    report = apply_attention(tiny_transformer, AttentionConfig("aiter_fp8", "per_head"), device="cuda")
    assert (report["backend"], report["op"], report["fp8_scaling"]) == ("aiter_fp8", "fluxperf::aiter_fp8", "per_tensor")


def test_apply_rejects_bad_inputs(tiny_transformer, monkeypatch):
    with pytest.raises(RecipeError, match="needs a fluxperf.recipe.AttentionConfig"):
        apply_attention(tiny_transformer, {"backend": "sdpa"})
    with pytest.raises(RecipeError, match="attention.backend='nope'"):
        apply_attention(tiny_transformer, AttentionConfig("nope"))
    with pytest.raises(UnavailableError, match="Linear has none"):
        apply_attention(torch.nn.Linear(2, 2), AttentionConfig())
    fp32 = build_pipeline("schnell", "tiny", dtype="float32", text_encoders=False).transformer
    monkeypatch.setattr(registry, "_gpu_facts", lambda index: ((9, 0), False, None))
    with pytest.raises(UnavailableError, match="dtype float32: fa3 takes bfloat16 or float16"):
        apply_attention(fp32, AttentionConfig("fa3"), device="cuda")


def test_apply_refuses_an_fa3_build_without_descales_for_scaled_fp8(tiny_transformer, fake_fa3, monkeypatch):
    """FA3 API drift is found at apply time (signature inspected once), not as a TypeError at the first forward."""
    monkeypatch.setattr(registry, "_gpu_facts", lambda index: ((9, 0), False, None))

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, descale_q=None, descale_k=None):  # no v descale
        return q

    fake_fa3.flash_attn_func = flash_attn_func
    with pytest.raises(UnavailableError, match=r"fa3_fwd_interface\.flash_attn_func \(unknown build.*takes no fp8 "
                                               r"descales.*fp8_scaling='unscaled'"):
        apply_attention(tiny_transformer, AttentionConfig("fa3_fp8", "per_head"), device="cuda")
    report = apply_attention(tiny_transformer, AttentionConfig("fa3_fp8", "per_head", fallback="sdpa"), device="cuda")
    assert report["backend"] == "sdpa" and "takes no fp8 descales" in report["fallback_reason"]
    for cfg in (AttentionConfig("fa3_fp8"), AttentionConfig("fa3")):  # unscaled and bf16 pass no descales: fine
        assert apply_attention(tiny_transformer, cfg, device="cuda")["backend"] == cfg.backend
    fake_fa3.flash_attn_func = lambda q, k, v: q  # no softmax_scale: no mode can run
    with pytest.raises(UnavailableError, match="takes no softmax_scale: its signature is \\(q, k, v\\)"):
        apply_attention(tiny_transformer, AttentionConfig("fa3"), device="cuda")
