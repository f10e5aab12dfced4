"""Exported packages of torchao-quantized modules (tensor-subclass weights), on CPU with int8.

Measured on the H200 (2026-11-29): the float8 export rung's package asked for 350 constants named
"<path>.parametrizations.weight.original<i>" — AOTInductor hands a tensor-subclass weight (torchao Float8Tensor /
Int8Tensor) to the package as its plain inner tensors — so weights="user" refused to load, and weights="so" crashed
in the weights fingerprint (a Float8Tensor cannot be reshaped to 1-D). int8 runs on CPU in torchao 0.18, so the same
class of weight is tested here for real: a CPU AOTInductor round trip with the live quantized weights handed over.
"""

from __future__ import annotations

import pytest
import torch

from fluxperf.optional import probe

pytestmark = pytest.mark.skipif(not probe("torchao"), reason="needs torchao (pip install torchao)")


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(64, 128), torch.nn.Linear(128, 64)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def _int8_mlp(seed: int = 0):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    torch.manual_seed(seed)
    model = _Mlp().eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def test_flat_constants_name_inner_tensors_as_aotinductor_does():
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    from fluxperf.steps.export.weights import flat_constants, owner_fqn

    model = _int8_mlp()
    assert is_traceable_wrapper_subclass(model.up.weight)
    flat = flat_constants(model)
    inner = sorted(n for n in flat if ".parametrizations." in n)
    assert inner and all(owner_fqn(n) in ("up.weight", "down.weight") for n in inner)
    assert all(type(flat[n]) is torch.Tensor for n in inner)  # plain tensors: what load_constants takes
    assert owner_fqn("up.bias") == "up.bias" and owner_fqn("parametrizations.w.original0") == "w"


def test_weights_fingerprint_of_quantized_weights_follows_their_values():
    from fluxperf.steps.export.cache import weights_fingerprint

    a, b = weights_fingerprint(_int8_mlp(0)), weights_fingerprint(_int8_mlp(1))
    assert a == weights_fingerprint(_int8_mlp(0)) and a != b


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A CPU AOTInductor package of the int8 MLP, built without its weights (constants given at load)."""
    from fluxperf.steps.export.apply import compile_package, export_program, inductor_configs_for
    from fluxperf.steps.export.call import ExampleInputs

    model = _int8_mlp()
    example = ExampleInputs(("x",), (torch.randn(8, 64),))
    path = tmp_path_factory.mktemp("aoti-int8") / "package.pt2"
    compile_package(export_program(model, example), str(path), inductor_configs_for(_export_recipe(), "user"))
    return path


def _export_recipe():
    from fluxperf.ladder import rung

    return rung("export").replace(quantize={"kind": "none"}, attention={"backend": "sdpa"}, inductor_flags={"enabled": False})


def test_user_weights_package_runs_on_the_live_quantized_weights(package):
    from fluxperf.steps.export.apply import load_package

    model = _int8_mlp()
    x = torch.randn(8, 64)
    loaded = load_package(package, model, single_threaded=False, weights="user")
    with torch.no_grad():
        expected = model(x)
    got = loaded(x)
    got = got[0] if isinstance(got, (list, tuple)) else got
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)

    # weights replaced by another quantized model's: the guard re-points the package at the new inner tensors
    other = _int8_mlp(seed=1)
    model.up.weight, model.down.weight = other.up.weight, other.down.weight
    model.up.bias, model.down.bias = other.up.bias, other.down.bias
    assert loaded._fluxperf_guard.check() is True
    got = loaded(x)
    got = got[0] if isinstance(got, (list, tuple)) else got
    with torch.no_grad():
        torch.testing.assert_close(got, other(x), rtol=2e-2, atol=2e-2)
