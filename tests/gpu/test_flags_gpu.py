"""Inductor flags engage inside compilation and leave the global config untouched (tiny model, CUDA inductor)."""

import pytest
import torch

from fluxperf.ladder import rung
from fluxperf.recipe import CompileConfig
from fluxperf.steps.compile import compile_transformer, inductor_config_snapshot

pytestmark = [pytest.mark.gpu, pytest.mark.numerics]


class _ConfigProbe:
    def __init__(self):
        self.seen = []

    def __call__(self, graph):
        import torch._inductor.config as c

        self.seen.append((c.epilogue_fusion, c.conv_1x1_as_mm, c.coordinate_descent_tuning,
                          c.coordinate_descent_check_all_directions))

    def uuid(self):
        return f"fluxperf-probe-{id(self)}"


def test_flags_engage_and_are_restored_on_cuda():
    from torch._inductor.custom_graph_pass import CustomGraphPass

    from fluxperf.model.build import build_pipeline
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec, transformer_inputs

    pipe = build_pipeline("schnell", "tiny", device="cuda", dtype="bfloat16", text_encoders=False)
    x = transformer_inputs(ShapeSpec("schnell", 256, 256, text_len=64), dims_of_pipeline(pipe), device="cuda")
    before = inductor_config_snapshot()
    CustomGraphPass.register(_ConfigProbe)
    probe = _ConfigProbe()
    torch._dynamo.reset()
    try:
        compile_transformer(pipe.transformer, CompileConfig(enabled=True, vae=False),
                            {**rung("flags").inductor_flags.options(), "post_grad_custom_post_pass": probe})
        with torch.inference_mode():
            pipe.transformer(**x)
    finally:
        torch._dynamo.reset()
    assert probe.seen and set(probe.seen) == {(False, True, True, True)}
    assert inductor_config_snapshot() == before
