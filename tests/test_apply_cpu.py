"""apply() on tiny pipelines (CPU): what each stage does, its report, and scoped inductor flags."""

import numpy as np
import pytest
import torch

from fluxperf.apply import apply
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.ladder import rung
from fluxperf.model.configs import dims_of_pipeline
from fluxperf.model.shapes import ShapeSpec, transformer_inputs
from fluxperf.optional import install_hint, probe
from fluxperf.recipe import CompileConfig, Recipe
from fluxperf.steps.compile import compile_options, compile_transformer, inductor_config_snapshot, inductor_flags

# fp32 on CPU: fusing concatenates the same weights, so only summation order can differ.
FUSED_QKV_ATOL = 1e-5


def _forward(pipe, batch=1, variant="schnell"):
    x = transformer_inputs(ShapeSpec(variant, 64, 64, batch, text_len=16), dims_of_pipeline(pipe),
                           dtype=torch.float32)
    with torch.no_grad():
        return pipe.transformer(**x)[0]


@pytest.mark.parametrize("variant, batch", [("schnell", 1), ("dev", 2), ("kontext", 1)])
def test_fused_qkv_matches_unfused(tiny_pipe_factory, variant, batch):
    pipe = tiny_pipe_factory(variant)
    ref = _forward(pipe, batch, variant)
    stack = apply(pipe, Recipe(dtype="float32", fuse_qkv=True))
    out = _forward(pipe, batch, variant)
    assert stack.qkv_fused and stack.step("fuse_qkv")["fused_attention_modules"] == 3
    assert stack.step("fuse_qkv")["dead_projections_removed"] == 3 * 3 + 3  # 3 modules, 1 double block
    assert not hasattr(pipe.transformer.transformer_blocks[0].attn, "to_q")
    assert torch.allclose(out, ref, atol=FUSED_QKV_ATOL, rtol=0), (out - ref).abs().max()


def test_report_lists_exactly_the_stages_that_ran(tiny_pipe_factory):
    pipe = tiny_pipe_factory()
    stack = apply(pipe, Recipe(dtype="bfloat16", fuse_qkv=True, channels_last=True))
    assert stack.stage_names == ["dtype", "fuse_qkv", "channels_last"]
    assert pipe.transformer.dtype == torch.bfloat16
    conv = pipe.vae.decoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    d = stack.to_dict()
    assert d["qkv_fused"] and d["float8_linear_count"] == 0 and d["attention_backend"] == "sdpa"


@pytest.mark.parametrize("torchao", ["installed", "missing"])
def test_float8_on_cpu_fails_loudly_not_silently(tiny_pipe_factory, hide_optional, torchao):
    if torchao == "missing":
        hide_optional("torchao")  # as in an environment installed with only .[test]
    elif not probe("torchao"):
        pytest.skip(f"needs torchao for the CPU-refusal message: {install_hint('torchao')}")
    pipe = tiny_pipe_factory(dtype="bfloat16")
    with pytest.raises(UnavailableError) as info:
        apply(pipe, Recipe.from_dict({"quantize": {"kind": "float8"}}))
    msg = str(info.value)
    assert "Fix" in msg
    if torchao == "missing":
        assert msg.startswith("torchao is not available") and install_hint("torchao") in msg, msg
    else:
        assert "CUDA" in msg, msg


def test_export_without_spec_is_a_clear_error(tiny_pipe_factory):
    with pytest.raises(RecipeError, match="spec"):
        apply(tiny_pipe_factory(dtype="bfloat16"), rung("export").replace(
            attention={"backend": "sdpa"}, quantize={"kind": "none"}))


def test_compile_options_never_pass_mode_and_options_together():
    flags = rung("flags").inductor_flags.options()
    kw = compile_options(CompileConfig(enabled=True, mode="max-autotune-no-cudagraphs"), flags)
    assert "mode" not in kw and kw["options"]["max_autotune"] is True and kw["options"]["epilogue_fusion"] is False
    assert compile_options(CompileConfig(enabled=True), {}) == {"fullgraph": True, "dynamic": None}  # automatic
    with pytest.raises(RecipeError, match="differently"):
        compile_options(CompileConfig(enabled=True, mode="max-autotune-no-cudagraphs"),
                        {"coordinate_descent_tuning": False})


def test_scoped_patch_restores_flags_even_on_error():
    keys = ["epilogue_fusion", "conv_1x1_as_mm", "coordinate_descent_tuning"]
    before = inductor_config_snapshot(keys)
    with pytest.raises(RuntimeError):
        with inductor_flags({"epilogue_fusion": not before["epilogue_fusion"]}):
            assert inductor_config_snapshot(["epilogue_fusion"])["epilogue_fusion"] != before["epilogue_fusion"]
            raise RuntimeError("boom")
    assert inductor_config_snapshot(keys) == before


class _ConfigProbe:
    """A post-grad pass that records the inductor config Inductor really compiles under (engagement)."""

    def __init__(self):
        self.seen = []

    def __call__(self, graph):
        import torch._inductor.config as c

        self.seen.append({"epilogue_fusion": c.epilogue_fusion, "conv_1x1_as_mm": c.conv_1x1_as_mm,
                          "coordinate_descent_tuning": c.coordinate_descent_tuning})

    def uuid(self):
        return f"fluxperf-probe-{id(self)}"


@pytest.mark.slow
def test_flags_engage_inside_compilation_and_global_config_is_untouched(tiny_pipe_factory):
    from torch._inductor.custom_graph_pass import CustomGraphPass

    pipe = tiny_pipe_factory()
    ref = _forward(pipe)
    flags = rung("flags").inductor_flags.options()
    before = inductor_config_snapshot()
    probe = _ConfigProbe()
    CustomGraphPass.register(_ConfigProbe)  # virtual subclass: inductor accepts it as a custom pass
    torch._dynamo.reset()
    try:
        compile_transformer(pipe.transformer, CompileConfig(enabled=True, vae=False),
                            {**flags, "post_grad_custom_post_pass": probe})
        out = _forward(pipe)
    finally:
        torch._dynamo.reset()
    assert probe.seen and all(s == {"epilogue_fusion": False, "conv_1x1_as_mm": True,
                                    "coordinate_descent_tuning": True} for s in probe.seen)
    assert inductor_config_snapshot() == before
    assert np.allclose(out.numpy(), ref.numpy(), atol=1e-4)
