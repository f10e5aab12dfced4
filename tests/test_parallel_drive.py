"""The driver/mirror protocol of the `parallel` perf group (fluxperf.parallel_launch.drive) on CPU: this process is
rank 0 and one spawned worker mirrors its calls over gloo, with the tiny model and diffusers' Ulysses."""

from __future__ import annotations

import contextlib

import pytest

from fluxperf.parallel_launch import LaunchError, drive

RECIPE = {"base": "cp2_ulysses_eager", "dtype": "float32"}


@contextlib.contextmanager
def _failing_setup(rank, world_size):
    """A setup whose 'boom' command raises in the worker (module-level: the worker unpickles it by name)."""
    def boom():
        raise RuntimeError(f"boom in rank {rank}")

    yield {"ok": lambda: None, "boom": boom}


@pytest.mark.slow
def test_mirrored_steps_match_the_single_process_transformer():
    """Rank 0 here drives rank 1 through 'step' commands; each parallel step (all-to-all with the worker) equals
    the unsplit forward of the same model on the same inputs, and a later call still pairs up (no drift)."""
    import torch

    from fluxperf.measure.parallel_bench import step_mirror
    from fluxperf.model.shapes import ShapeSpec

    spec = ShapeSpec("schnell", 64, 64)
    with step_mirror(0, 1, {"base": "bf16", "dtype": "float32"}, spec, size="tiny", dtype="float32", fresh_cache=False,
                     device="cpu") as single:
        ref = single.commands["step"]().clone()  # one process, no parallel stage: the reference
    with drive(step_mirror, RECIPE, spec, "tiny", nprocs=2, backend="gloo", timeout_s=60) as driver, \
            step_mirror(0, 2, RECIPE, spec, size="tiny", fresh_cache=False) as mine:
        outs = []
        for _ in range(3):
            driver.call("step")
            outs.append(mine.commands["step"]())
        report = mine.run.stack.to_dict()["steps"]["parallel"]
    assert driver.calls == {"step": 3}
    assert (report["world_size"], report["dist_backend"]) == (2, "gloo")
    for out in outs:
        assert out.shape == ref.shape
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    assert not torch.distributed.is_initialized()  # drive left this process as it found it


def test_a_worker_error_reaches_rank_0_with_its_traceback():
    with pytest.raises(LaunchError) as exc:
        with drive(_failing_setup, nprocs=2, backend="gloo", timeout_s=60) as driver:
            driver.call("ok")
            driver.call("boom")
    assert "mirror rank 1 of 2 (gloo) failed" in str(exc.value) and "boom in rank 1" in str(exc.value)


def test_an_unknown_command_is_named_with_the_known_ones():
    with pytest.raises(LaunchError) as exc:
        with drive(_failing_setup, nprocs=2, backend="gloo", timeout_s=60) as driver:
            driver.call("nope")
    assert "'nope' is not one of ['boom', 'ok']" in str(exc.value)


def test_drive_refuses_bad_launches_before_starting_anything():
    with pytest.raises(LaunchError, match="2 to 8"):
        with drive(_failing_setup, nprocs=1, backend="gloo"):
            pass
