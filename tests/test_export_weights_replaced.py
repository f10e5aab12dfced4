"""Weights replaced after export (issue 13.4): the WeightsGuard follows replaced parameters where the package reads
the module's tensors ("user") and refuses where it holds a snapshot ("copy"/"so"); a real CPU AOTI round trip."""

from __future__ import annotations

import pytest
import torch

from fluxperf.model.build import build_pipeline
from fluxperf.model.configs import dims_of_pipeline
from fluxperf.model.shapes import ShapeSpec
from fluxperf.steps.export.apply import export_program, install_adapters, remove_export
from fluxperf.steps.export.call import TransformerExportModule, transformer_example
from fluxperf.steps.export.cudagraph import CudaGraphRunner, EagerReplayBackend


# -- weights replaced after export (issue 13.4) ---------------------------------------------------------------------
class _RecordingPackage:
    def __init__(self):
        self.loads = []

    def load_constants(self, constants, *, check_full_update, user_managed):
        self.loads.append((constants, check_full_update, user_managed))


def _guarded(mode="user"):
    from fluxperf.steps.export.weights import WeightsGuard

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    package = _RecordingPackage()
    fqns = ["0.weight", "0.bias", "1.weight", "1.running_mean"]
    return model, package, WeightsGuard(package if mode == "user" else None, model, fqns, mode)


def test_guard_follows_replaced_parameters_in_user_mode():
    model, package, guard = _guarded()
    assert guard.check() is False and package.loads == []
    with torch.no_grad():
        model[0].weight.mul_(2)  # in place: the package reads the same storage, nothing to do
    assert guard.check() is False and package.loads == []

    new = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(new, assign=True)  # new Parameter objects (LoRA hot-swap and loaders do this)
    assert guard.changed() == ["0.weight", "0.bias", "1.weight", "1.running_mean"]
    assert guard.check() is True and guard.refreshes == 1
    (constants, full, user_managed), = package.loads
    assert full is True and user_managed is True
    assert constants["0.weight"].data_ptr() == model[0].weight.data_ptr()  # re-pointed, not copied
    assert not constants["0.weight"].requires_grad and package._fluxperf_constants is constants
    assert guard.check() is False  # recorded again: no refresh per call

    model[1].weight.data = torch.full((4,), 3.0)  # same Parameter object, new storage
    assert guard.changed() == ["1.weight"] and guard.check() is True and len(package.loads) == 2


@pytest.mark.parametrize("mode", ["copy", "so"])
def test_guard_refuses_replaced_weights_where_the_package_holds_a_snapshot(mode):
    from fluxperf.steps.export.weights import WeightsReplacedError

    model, package, guard = _guarded(mode)
    model[0].weight = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(WeightsReplacedError, match=rf"1 weight tensors were replaced.*'0.weight'.*weights='{mode}'.*"
                                                   r"Fix: .*remove_export"):
        guard.check()
    assert package.loads == []


def test_guard_refuses_what_it_cannot_follow():
    from fluxperf.steps.export.weights import WeightsReplacedError

    model, package, guard = _guarded()
    model[0].weight = torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(WeightsReplacedError, match=r"0.weight was replaced by a torch.float64 tensor.*built for "
                                                   r"torch.float32 \(4, 4\)"):
        guard.check()
    model, package, guard = _guarded()
    model[0] = torch.nn.Linear(4, 4)  # a swapped layer (e.g. a LoRA wrapper): another graph, not new weights
    with pytest.raises(WeightsReplacedError, match=r"submodules \['0'\] were replaced.*remove_export"):
        guard.check()
    assert package.loads == []


@pytest.mark.slow
@pytest.mark.export
def test_real_cpu_package_follows_replaced_weights(tmp_path):
    """AOTInductor on CPU (torch 2.13 builds CPU packages here): the tiny FLUX transformer with weights='user' under
    the graph runner; load_state_dict(assign=True) with another seed's weights, then param.data = ..., then an
    in-place change: every call equals eager with the CURRENT weights. weights='copy' refuses instead."""
    from fluxperf.steps.export.apply import WeightsReplacedError, compile_package, load_package
    from fluxperf.steps.export.call import _single

    pipe = build_pipeline("schnell", "tiny", dtype="float32", text_encoders=False)
    other = build_pipeline("schnell", "tiny", dtype="float32", text_encoders=False, seed=1)
    spec = ShapeSpec("schnell", 32, 32, text_len=8)
    module = TransformerExportModule(pipe.transformer)
    ex = transformer_example(spec, dims_of_pipeline(pipe), dtype=torch.float32)
    path = tmp_path / "transformer.pt2"
    compile_package(export_program(module, ex), str(path), {"aot_inductor.package_constants_in_so": False})
    loaded = load_package(path, module, single_threaded=True, weights="user")
    runner = CudaGraphRunner(loaded, backend=EagerReplayBackend())
    install_adapters(pipe, spec, runner, ex, transformer_guard=loaded._fluxperf_guard)
    x = dict(zip(ex.names, ex.args))

    def call():
        return pipe.transformer(**x, return_dict=False)[0]

    def close(a, b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    with torch.no_grad():
        ref_old = module(*ex.args)  # eager: the class's forward, not the adapter
        close(call(), ref_old)
        pipe.transformer.load_state_dict(other.transformer.state_dict(), assign=True)
        ref_new = module(*ex.args)
        assert (ref_new - ref_old).abs().max() > 0.1  # other weights really change the output...
        close(_single(loaded(*ex.args)), ref_old)  # ...and the bare package still computes the old model
        close(call(), ref_new)  # through the adapter: followed
        assert loaded._fluxperf_guard.refreshes == 1 and runner.stats.recorded == 2  # graph captured again
        block = pipe.transformer.transformer_blocks[0]
        block.ff.net[2].weight.data = block.ff.net[2].weight.data * 3  # same Parameter, new storage
        close(call(), module(*ex.args))
        block.ff.net[2].weight.mul_(0.5)  # in place: read directly, no refresh needed
        close(call(), module(*ex.args))
        assert loaded._fluxperf_guard.refreshes == 2

    remove_export(pipe)
    copied = load_package(path, module, single_threaded=False, weights="copy")
    install_adapters(pipe, spec, copied, ex, transformer_guard=copied._fluxperf_guard)
    with torch.no_grad():
        close(call(), module(*ex.args))
        pipe.transformer.load_state_dict(other.transformer.state_dict(), assign=True)
        with pytest.raises(WeightsReplacedError, match="weights='copy'"):
            call()
