"""The driver/mirror protocol of the `parallel` perf group (fluxperf.parallel_mirror) on CPU: this process is rank 0
and one spawned worker mirrors its calls over gloo, with the tiny model and diffusers' Ulysses, one group serving
setups one after another, a failed setup breaking the group, and the shutdown order."""

from __future__ import annotations

import contextlib

import pytest

from fluxperf.parallel_launch import LaunchError
from fluxperf.parallel_mirror import MirrorGroup, drive, mirror_group

RECIPE = {"base": "cp2_ulysses_eager", "dtype": "float32"}


@contextlib.contextmanager
def _failing_setup(rank, world_size):
    """A setup whose 'boom' command raises in the worker (module-level: the worker unpickles it by name)."""
    def boom():
        raise RuntimeError(f"boom in rank {rank}")

    yield {"ok": lambda: None, "boom": boom}


@contextlib.contextmanager
def _sum_setup(rank, world_size, offset):
    """'sum' all-reduces rank + offset over the group; rank 0 reads the results from the yielded object."""
    import torch
    import torch.distributed as dist

    class Entered:
        results: list = []

        def _sum():
            value = torch.tensor([float(rank + offset)])
            dist.all_reduce(value)
            Entered.results.append(value.item())

        commands = {"sum": _sum}

    yield Entered


@pytest.mark.slow
def test_mirrored_steps_and_images_match_the_single_process_ones():
    """Rank 0 here drives rank 1 through 'step' commands, then, in the same group, 'image' commands of a new setup:
    each parallel step (all-to-all with the worker) equals the unsplit forward of the same model on the same inputs,
    a later call still pairs up (no drift), and the 2-step image equals the single-process one."""
    import numpy as np
    import torch

    from fluxperf.measure.parallel_bench import image_mirror, step_mirror
    from fluxperf.model.shapes import ShapeSpec

    spec, single_recipe = ShapeSpec("schnell", 64, 64), {"base": "bf16", "dtype": "float32"}
    with step_mirror(0, 1, single_recipe, spec, size="tiny", dtype="float32", fresh_cache=False,
                     device="cpu") as single:
        ref = single.commands["step"]().clone()  # one process, no parallel stage: the reference
    with image_mirror(0, 1, single_recipe, spec, 2, size="tiny", dtype="float32", fresh_cache=False,
                      device="cpu") as single:
        ref_image = single.commands["image"]()
    with mirror_group(2, backend="gloo", timeout_s=60) as group:
        with group.mirror(step_mirror, RECIPE, spec, "tiny") as driver, \
                step_mirror(0, 2, RECIPE, spec, size="tiny", fresh_cache=False) as mine:
            outs = []
            for _ in range(3):
                driver.call("step")
                outs.append(mine.commands["step"]())
            report = mine.run.stack.to_dict()["steps"]["parallel"]
        assert driver.calls == {"step": 3}
        with group.mirror(image_mirror, RECIPE, spec, 2, "tiny") as driver, \
                image_mirror(0, 2, RECIPE, spec, 2, size="tiny", fresh_cache=False) as mine:
            driver.call("image")
            image = mine.commands["image"]()
    assert (report["world_size"], report["dist_backend"]) == (2, "gloo")
    for out in outs:
        assert out.shape == ref.shape
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    assert image.shape == ref_image.shape == (64, 64, 3)
    np.testing.assert_allclose(image, ref_image, atol=1e-4)
    assert not torch.distributed.is_initialized()  # the group left this process as it found it


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


def test_one_group_serves_setups_one_after_another():
    """The perf group's rungs share one process group (a second NCCL group in one process crashed on the H200s):
    each mirror enters a new setup with its own arguments in the same worker, whose collectives pair with ours."""
    import torch.distributed as dist

    with mirror_group(2, backend="gloo", timeout_s=60) as group:
        pids = group.worker_pids
        for offset in (0, 10):
            with group.mirror(_sum_setup, offset) as driver, _sum_setup(0, 2, offset) as mine:
                mine.results.clear()
                for _ in range(2):
                    driver.call("sum")
                    mine.commands["sum"]()
            assert mine.results == [1.0 + 2 * offset] * 2  # (0 + offset) + (1 + offset): the worker has the new args
            assert dist.is_initialized()  # still the same group between setups
        assert group.setups == 2 and group.worker_pids == pids and group.broken is None
    assert not dist.is_initialized()


def test_a_failed_setup_breaks_the_group_and_later_setups_are_refused_naming_it():
    """Rank 0 failing inside a setup may leave a worker at a collective: the next setup is refused with the first
    failure named (not run into a hang), and leaving the group terminates the worker instead of waiting for it."""
    import time

    started = time.monotonic()
    with pytest.raises(LaunchError, match=r"broken by an earlier failure \(RuntimeError: rank 0 fails here\)"):
        with mirror_group(2, backend="gloo", timeout_s=60, stop_timeout_s=60) as group:
            with pytest.raises(RuntimeError):
                with group.mirror(_failing_setup):
                    raise RuntimeError("rank 0 fails here")
            assert group.broken.startswith("RuntimeError: rank 0 fails here")
            with group.mirror(_failing_setup):
                pytest.fail("a broken group ran a setup")
    assert time.monotonic() - started < 30  # terminated, not joined for stop_timeout_s


def test_a_healthy_group_destroys_its_own_process_group_before_joining_the_workers(monkeypatch):
    """NCCL's communicator teardown waits for every rank of the node: rank 0 joining the workers before destroying
    its own group deadlocked on the H200s until they were terminated (exit -15). The order is the fix."""
    import torch.distributed as dist

    from fluxperf import parallel_mirror

    events = []

    class Proc:
        pid, exitcode = 1, 0

        def is_alive(self):
            return True

        def join(self, timeout=None):
            events.append("join")

        def terminate(self):
            events.append("terminate")

    class Queue:
        def put(self, item):
            events.append(f"put {item}")

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: events.append("destroy"))
    group = MirrorGroup(2, "gloo", [Queue()], None, [Proc()])
    parallel_mirror._close(group, [Proc()], [Queue()], broken=False, stop_timeout_s=1)
    assert events[:3] == ["put stop", "destroy", "join"]
    events.clear()
    parallel_mirror._close(group, [Proc()], [Queue()], broken=True, stop_timeout_s=1)
    assert events[:2] == ["terminate", "destroy"]  # a broken group's workers cannot take part in a teardown


def test_a_setup_the_workers_cannot_receive_is_refused_before_any_worker_enters():
    with mirror_group(2, backend="gloo", timeout_s=60) as group:
        with pytest.raises(LaunchError, match=r"cannot be sent to the workers.*Fix: a module-level setup function"):
            with group.mirror(contextlib.contextmanager(lambda rank, world_size: iter([{}]))):
                pass
        assert group.broken is None and group.setups == 0  # nothing was sent: the group is still usable
        with group.mirror(_sum_setup, 1) as driver, _sum_setup(0, 2, 1) as mine:
            mine.results.clear()
            driver.call("sum")
            mine.commands["sum"]()
        assert mine.results == [3.0]
