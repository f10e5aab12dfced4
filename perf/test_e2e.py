"""End-to-end FLUX.1-schnell image: text encoders, 4 steps, VAE decode, at 1024x1024 batch 1."""

from __future__ import annotations

import pytest


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.slow
@pytest.mark.parametrize("rung_name", [
    pytest.param("compile", id="compile", marks=pytest.mark.perf_group("e2e_compile")),
    pytest.param("flags", id="full_stack", marks=[pytest.mark.perf_group("e2e_full"), pytest.mark.fa3,
                                                  pytest.mark.torchao]),
])
def test_end_to_end(perf, rung_name):
    extra = perf.end_to_end(rung_name)
    assert extra["rounds"] >= 7
    assert extra["proxies"]["recompiles"] == 0, "a compiled pipeline must not recompile between identical calls"
