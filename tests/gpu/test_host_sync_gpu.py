"""GPU numerics tier: no host syncs in the denoising loop (issue 15.5).

The flux-fast lesson: one `.item()` per step stalls the host until the GPU drains, every step, and the compiled
graph loses its lead. Under torch.cuda.set_sync_debug_mode("warn") (fluxperf.measure.host_sync):
(a) a warm transformer forward and a warm 2-step denoising call of each compiled rung (compile, fused_qkv, float8;
    full-size synthetic schnell at 1024x1024, built through fluxperf.measure.runner.prepared, inputs from
    fluxperf.model.shapes via numerics.fixed_inputs) synchronize zero times, naming the op otherwise;
(b) a sync injected on purpose (a forward hook calling .item()) is caught once per step and named, in warn and in
    error mode, on the same compiled pipelines;
(c) the eager pipeline's full loop (scheduler step included) does not sync per step, and without the pipeline's
    scheduler.set_begin_index(0) it does (index_for_timestep: nonzero + .item()), so the guard sees the real thing.

Run: python -m pytest -m gpu -p no:cacheprovider -rs tests/gpu/test_host_sync_gpu.py
(or bash scripts/tiers/gpu-tier.sh tests/gpu/test_host_sync_gpu.py). About 1-3 minutes per compiled rung on an H200.
"""

from __future__ import annotations

import pytest
import torch
from root_conftest import recipe_marks

from fluxperf.measure.host_sync import HostSyncError, assert_no_host_syncs, syncs_per_step, watch_syncs

pytestmark = [pytest.mark.gpu, pytest.mark.numerics,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU: torch.cuda.set_sync_debug_mode observes CUDA syncs only")]

RUNGS = ["compile", "fused_qkv", "float8"]
SPEC_ARGS = ("schnell", 1024, 1024, 1)  # the numerics tier's shape (tests/gpu/conftest.py)
STEPS = 2


def _report(report) -> str:
    return report.describe() + ("\nfirst stack:\n  " + "\n  ".join(report.first_stack) if report.first_stack else "")


def _inject_item(module, args, out) -> None:
    """The sync injected on purpose: reads a device value back to the host once per transformer call."""
    out[0].sum().item()


# -- (a) + (b): compiled rungs, full size -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[pytest.param(name, marks=recipe_marks(name)[0]) for name in RUNGS])
def warm_rung(request):
    """{"rung", "pipe", "inputs"}: a full-size pipeline with the rung applied, warmed up by one forward and one
    call (compilation and autotuning synchronize by design). Emptied after the rung's tests, before `prepared`
    frees the GPU and resets dynamo (pytest keeps the yielded object until then)."""
    from fluxperf.ladder import recipe_from
    from fluxperf.measure.numerics import fixed_inputs, image_of
    from fluxperf.measure.runner import prepared
    from fluxperf.model.shapes import ShapeSpec

    name = request.param
    _, missing = recipe_marks(name, check=True)
    if missing:
        pytest.skip(missing)
    with prepared("schnell", "full", recipe_from(name), device="cuda", spec=ShapeSpec(*SPEC_ARGS),
                  steps=STEPS) as run:
        state = {"rung": name, "pipe": run.pipe, "inputs": fixed_inputs(run.pipe, SPEC_ARGS)}
        with torch.inference_mode():
            run.pipe.transformer(**state["inputs"]["transformer"])
        image_of(run.pipe, state["inputs"], steps=STEPS)
        yield state
        state.clear()


def _image_call(pipe, inputs, steps: int = STEPS):
    from fluxperf.measure.numerics import image_of

    return lambda: image_of(pipe, inputs, steps=steps)


def test_warm_compiled_forward_does_not_sync(warm_rung):
    pipe, inputs = warm_rung["pipe"], warm_rung["inputs"]
    with torch.inference_mode():
        assert_no_host_syncs(lambda: pipe.transformer(**inputs["transformer"]))  # raises naming each op


def test_warm_denoising_steps_do_not_sync(warm_rung):
    name, pipe, inputs = warm_rung["rung"], warm_rung["pipe"], warm_rung["inputs"]
    report = syncs_per_step(pipe, _image_call(pipe, inputs))
    print(f"\n[host-sync] {name}: {report.describe()}")
    assert report.steps == STEPS
    assert report.count == 0, f"rung {name}: {_report(report)}"


def test_injected_item_is_caught_and_named(warm_rung):
    name, pipe, inputs = warm_rung["rung"], warm_rung["pipe"], warm_rung["inputs"]
    handle = pipe.transformer.register_forward_hook(_inject_item)
    try:
        report = syncs_per_step(pipe, _image_call(pipe, inputs))
        with torch.inference_mode(), pytest.raises(HostSyncError, match=r"out\[0\]\.sum\(\)\.item\(\).*"
                                                                       r"test_host_sync_gpu.py:\d+ in _inject_item"):
            with watch_syncs("error"):
                pipe.transformer(**inputs["transformer"])
    finally:
        handle.remove()
    assert report.per_step == (1,) * STEPS, f"rung {name}: {_report(report)}"
    (op, times), = report.ops
    assert times == STEPS and ".item()" in op and "test_host_sync_gpu.py" in op


# -- (c): the eager pipeline's full loop, and what the pipeline's set_begin_index(0) avoids -----------------------
@pytest.fixture(scope="module")
def eager_tiny():
    """{"pipe", "inputs"}: the tiny bf16 eager pipeline on the GPU (same pipeline class and scheduler as the full
    size), warmed up by one call (lazy CUDA / cuBLAS initialization)."""
    from fluxperf.ladder import recipe_from
    from fluxperf.measure.numerics import fixed_inputs
    from fluxperf.measure.runner import prepared

    with prepared("schnell", "tiny", recipe_from("bf16"), device="cuda") as run:
        state = {"pipe": run.pipe, "inputs": fixed_inputs(run.pipe, ("schnell", 64, 64, 1))}
        _image_call(run.pipe, state["inputs"], 3)()
        yield state
        state.clear()


def test_full_loop_with_scheduler_step_does_not_sync(eager_tiny):
    pipe = eager_tiny["pipe"]
    report = syncs_per_step(pipe, _image_call(pipe, eager_tiny["inputs"], 3))
    print(f"\n[host-sync] eager bf16: {report.describe()}")
    assert report.steps == 3 and report.count == 0, _report(report)


def test_without_begin_index_the_scheduler_syncs_and_is_named(eager_tiny, monkeypatch):
    """What FluxPipeline's scheduler.set_begin_index(0) (from flux-fast, diffusers PR 11696) removes: with it
    made a no-op, the first scheduler.step looks the timestep up (nonzero + .item()) and the guard names it."""
    pipe = eager_tiny["pipe"]
    monkeypatch.setattr(pipe.scheduler, "set_begin_index", lambda begin_index=0: None)
    report = syncs_per_step(pipe, _image_call(pipe, eager_tiny["inputs"], 3))
    assert report.per_step[0] >= 1 and report.per_step[1:] == (0, 0), _report(report)
    assert all("index_for_timestep" in op for op, _ in report.ops), report.ops
    assert any(".item()" in op or "nonzero" in op for op, _ in report.ops), report.ops
