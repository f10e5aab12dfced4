"""Host-sync guard (fluxperf.measure.host_sync), CPU tier.

On a CPU build torch.cuda.set_sync_debug_mode cannot run (it asserts "Torch not compiled with CUDA enabled"), so
the real detection is GPU-only (tests/gpu/test_host_sync_gpu.py). Here:
* the refusal without CUDA is real;
* the mechanics (mode set and always restored, warning capture with the issuing line and stack, pass-through of
  other warnings, error mode, explicit waits, per-step attribution on the real tiny pipeline) run against a fake
  of exactly the two things a CPU build lacks: the debug-mode switch and c10's warn_or_error_on_sync()
  (a UserWarning "called a synchronizing CUDA operation" in mode warn, a RuntimeError with that text in mode error);
* the scheduler state of fluxperf's pipelines is checked for real: begin_index is 0 before the first step and
  step_index advances by one per step, so FlowMatchEulerDiscreteScheduler.index_for_timestep (nonzero + .item(),
  the per-call host sync flux-fast removed) is never called.
"""

from __future__ import annotations

import functools
import os
import warnings

import pytest

from fluxperf.errors import FluxperfError, UnavailableError
from fluxperf.measure import host_sync
from fluxperf.measure.host_sync import (
    SYNC_MESSAGE,
    HostSyncError,
    assert_no_host_syncs,
    syncs_per_step,
    watch_syncs,
)

STEPS = 3


class FakeSyncDebug:
    """The CUDA-only pieces host_sync drives, faked: the debug-mode switch (get/set as torch.cuda's: str or int in,
    int out) and c10's warn_or_error_on_sync(), which a synchronizing op calls."""

    CODES = {"default": 0, "warn": 1, "error": 2}

    def __init__(self, mode: int = 0):
        self.mode, self.history = mode, []

    def get(self) -> int:
        return self.mode

    def set(self, mode) -> None:
        self.mode = self.CODES[mode] if isinstance(mode, str) else int(mode)
        self.history.append(self.mode)

    @property
    def sync(self):
        """What c10 does when an op synchronizes, as a C-level callable (no Python frame of the fake between the
        calling line and the sync, as with a real op): mode warn: a UserWarning issued from the calling line
        (torch converts the C++ TORCH_WARN so); mode error: a RuntimeError raised from C++ (TORCH_CHECK)."""
        import torch

        if self.mode == 2:
            return functools.partial(torch._assert_async, torch.tensor(False), SYNC_MESSAGE)
        if self.mode == 1:
            return functools.partial(warnings.warn, f"{SYNC_MESSAGE} (Triggered internally at "
                                     "c10/cuda/CUDAFunctions.cpp.)", UserWarning, 1)
        return int  # mode default: nothing happens


@pytest.fixture
def fake(monkeypatch):
    import torch

    debug = FakeSyncDebug()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", debug.get)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", debug.set)
    return debug


def _item_like(debug):
    debug.sync()  # the "op": its line is what the guard must name


# -- refusals ------------------------------------------------------------------------------------------------
def test_without_cuda_refuses_instead_of_reporting_zero():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for CPU builds")
    ran = []
    with pytest.raises(UnavailableError, match=r"CUDA is not available: .*set_sync_debug_mode.*Fix: run on a CUDA"):
        with watch_syncs():
            ran.append(1)
    assert ran == [] and not host_sync.observable()


def test_unknown_mode_refused_before_the_mode_is_touched(fake):
    with pytest.raises(ValueError, match=r"mode='loud' .*Fix: use one of \['warn', 'error'\]"):
        with watch_syncs("loud"):
            pass
    assert fake.history == []


# -- warn mode: collection -------------------------------------------------------------------------------------
def test_warn_mode_records_each_sync_with_its_line_and_stack(fake):
    with watch_syncs("warn") as log:
        assert fake.mode == 1
        for _ in range(2):
            _item_like(fake)  # the same line twice: both recorded ("always", not once per line)
    assert fake.mode == 0 and log.count == 2
    event = log.events[0]
    assert event.op == "debug.sync()  # the \"op\": its line is what the guard must name"
    assert event.where.startswith(f"{__file__}:") and event.where.endswith(" in _item_like")
    assert not event.explicit
    # outermost first: this test's frame calls _item_like; no frame of the warning machinery or of host_sync
    assert "in test_warn_mode_records_each_sync_with_its_line_and_stack:" in event.stack[-2]
    assert event.stack[-1].startswith(event.where)
    assert not any(f"{os.sep}warnings.py:" in f or host_sync.__file__ in f for f in event.stack)
    assert log.ops() == ((event.describe(), 2),)


def test_other_warnings_pass_through_to_the_outer_handler(fake):
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with watch_syncs() as log:
            warnings.warn("unrelated", RuntimeWarning, stacklevel=1)
            _item_like(fake)
    assert [str(w.message) for w in outer] == ["unrelated"]
    assert log.count == 1


def test_mode_filters_and_waits_restored_when_the_block_raises(fake):
    import torch

    fake.mode = 1  # an outer setting (e.g. a user's warn mode) must come back, not "default"
    show, filters, sync = warnings.showwarning, list(warnings.filters), torch.cuda.synchronize
    with pytest.raises(KeyError):
        with watch_syncs("error"):
            assert fake.mode == 2 and torch.cuda.synchronize is not sync
            raise KeyError("boom")
    assert fake.mode == 1 and fake.history == [2, 1]
    assert warnings.showwarning is show and warnings.filters == filters and torch.cuda.synchronize is sync


# -- error mode ----------------------------------------------------------------------------------------------
def test_error_mode_raises_naming_the_line(fake):
    after = []
    with pytest.raises(HostSyncError, match=r"host sync .*`debug.sync\(\)  # the \"op\".*test_host_sync.py:\d+ "
                                            r"in _item_like") as info:
        with watch_syncs("error"):
            _item_like(fake)
            after.append(1)
    assert after == [] and fake.mode == 0
    assert isinstance(info.value.__cause__, RuntimeError)


def test_error_mode_lets_other_runtime_errors_through(fake):
    with pytest.raises(RuntimeError, match="^unrelated$"):
        with watch_syncs("error"):
            raise RuntimeError("unrelated")
    assert fake.mode == 0


# -- explicit waits ------------------------------------------------------------------------------------------
def test_explicit_synchronize_is_recorded_then_really_called(fake):
    import torch

    with watch_syncs() as log:
        with pytest.raises((AssertionError, RuntimeError), match="CUDA"):  # the real one, on a CPU build
            torch.cuda.synchronize()
    assert [e.op for e in log.events] == ["torch.cuda.synchronize()"]
    assert log.events[0].explicit and " in test_explicit_synchronize_is_recorded_then_really_called" in \
        log.events[0].where


def test_explicit_synchronize_fails_fast_in_error_mode(fake):
    import torch

    with pytest.raises(HostSyncError, match=r"`torch.cuda.synchronize\(\)` at .*test_host_sync.py"):
        with watch_syncs("error"):
            torch.cuda.synchronize()


def test_assert_no_host_syncs(fake):
    assert assert_no_host_syncs(lambda x: x + 1, 1) == 2

    def three():
        for _ in range(3):
            _item_like(fake)

    with pytest.raises(HostSyncError, match=r"^3 host sync\(s\) where none may happen: `debug.sync\(\).* x3\n"
                                            r"first stack:\n"):
        assert_no_host_syncs(three)


# -- per-step attribution on the real tiny pipeline ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tiny_image_runner):
    """variant -> (pipe, run) of a fresh tiny pipeline (CPU, fp32, 64x64)."""
    return {variant: tiny_image_runner(variant, STEPS) for variant in ("schnell", "kontext")}


def test_syncs_attributed_to_setup_steps_and_tail(fake, tiny_runs):
    pipe, run = tiny_runs["schnell"]
    hooks = [pipe.transformer.register_forward_hook(lambda *a: fake.sync()),  # once per step
             pipe.vae.decoder.register_forward_hook(lambda *a: fake.sync())]  # once, after the loop
    try:
        report = syncs_per_step(pipe, lambda: run(STEPS))
        assert "step" not in vars(pipe.scheduler) and "progress_bar" not in vars(pipe)  # wrappers removed
        report_setup = syncs_per_step(pipe, lambda: (fake.sync(), run(STEPS)))  # a sync before the call
    finally:
        for hook in hooks:
            hook.remove()
    assert report.steps == STEPS and report.per_step == (1,) * STEPS
    assert (report.setup, report.tail, report.count, report.per_step_mean) == (0, 1, STEPS, 1.0)
    assert len(report.ops) == 1 and report.ops[0][1] == STEPS and "<lambda>" in report.ops[0][0]
    assert any("pipeline_flux.py" in f and " in __call__:" in f for f in report.first_stack)  # in the loop
    assert report.describe().startswith(f"{STEPS} host sync(s) in {STEPS} denoising steps (per step [1, 1, 1]): ")
    assert report.to_dict()["per_step"] == [1] * STEPS
    assert (report_setup.setup, report_setup.per_step, report_setup.tail) == (1, (1,) * STEPS, 1)


def test_clean_call_reports_zero_per_step(fake, tiny_runs):
    pipe, run = tiny_runs["schnell"]
    report = syncs_per_step(pipe, lambda: run(STEPS))
    assert report.per_step == (0,) * STEPS and report.first_stack == () and report.ops == ()
    assert report.describe() == f"no host sync in {STEPS} denoising steps (setup 0, tail 0)"


def test_call_that_never_runs_the_pipeline_is_refused(fake, tiny_runs):
    pipe, _ = tiny_runs["schnell"]
    with pytest.raises(FluxperfError, match=r"never ran FluxPipeline's denoising loop \(progress bar entered: "
                                            r"False, scheduler.step calls: 0\). Fix: "):
        syncs_per_step(pipe, lambda: None)
    assert "step" not in vars(pipe.scheduler)


# -- the scheduler of fluxperf's pipelines needs no per-step lookup (real, no fakes) ------------------------------
@pytest.mark.parametrize("variant", ["schnell", "kontext"])
def test_pipeline_sets_begin_index_so_no_timestep_lookup(tiny_runs, variant):
    """FluxPipeline / FluxKontextPipeline call scheduler.set_begin_index(0) before the loop (diffusers PR 11696,
    from flux-fast): step k then reads sigmas[k] from step_index, and index_for_timestep, whose nonzero() and
    .item() synchronize with the host on a GPU, never runs. If a diffusers upgrade drops that call, this fails."""
    pipe, run = tiny_runs[variant]
    scheduler = pipe.scheduler
    seen, lookups = [], []
    original_step, original_lookup = scheduler.step, scheduler.index_for_timestep

    def step(*args, **kwargs):
        seen.append((scheduler.begin_index, scheduler.step_index))
        return original_step(*args, **kwargs)

    scheduler.step = step
    scheduler.index_for_timestep = lambda *a, **k: lookups.append(a) or original_lookup(*a, **k)
    try:
        run(STEPS)
    finally:
        del scheduler.step, scheduler.index_for_timestep
    assert lookups == []
    assert seen == [(0, None)] + [(0, k) for k in range(1, STEPS)]  # step 0 starts from begin_index
    assert scheduler.step_index == STEPS


def test_stock_scheduler_without_begin_index_looks_the_timestep_up(tiny_runs):
    """The contrast: the same scheduler driven without set_begin_index (as pipelines before the fix did) calls
    index_for_timestep on its first step; the test above therefore can fail."""
    import torch

    scheduler = type(tiny_runs["schnell"][0].scheduler).from_config(tiny_runs["schnell"][0].scheduler.config)
    scheduler.set_timesteps(STEPS, mu=1.0)
    lookups = []
    original = scheduler.index_for_timestep
    scheduler.index_for_timestep = lambda *a, **k: lookups.append(a) or original(*a, **k)
    x = torch.zeros(1, 4, 8)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x, return_dict=False)[0]
    assert len(lookups) == 1 and scheduler.begin_index is None
