"""VAE decode (128x128 latents -> 1024x1024 image): eager bf16, compiled, compiled with fused QKV + channels_last."""

from __future__ import annotations

import pytest

VAE_RUNGS = {"bf16": "eager", "compile": "compiled", "channels_last": "compiled_channels_last"}


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.perf_group("base")
@pytest.mark.parametrize("rung_name", [pytest.param(r, id=label) for r, label in VAE_RUNGS.items()])
def test_vae_decode(perf, rung_name):
    extra = perf.vae_decode(rung_name)
    assert extra["rounds"] >= 10
    assert extra["proxies"]["kernels_per_step"] > 0
