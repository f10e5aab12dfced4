"""Rank 0 in this process, ranks 1..N-1 in workers that repeat its calls: context-parallel benchmarks (issue 16).

A benchmark harness (pytest-benchmark through fluxperf.bench.harness.Bench) times a function in the pytest
process, so that process must be rank 0, and the other ranks must make the same calls (their collectives pair
with rank 0's). `mirror_group` starts ranks 1..N-1 as worker processes and joins this process to the group as
rank 0, once; `MirrorGroup.mirror(setup, *args)` then has every worker enter `setup(rank, world_size, *args)` (a
context manager yielding {command name: zero-argument callable}, or an object with that dict as `.commands`) and
run the commands rank 0 sends, in order, until rank 0 leaves. Rank 0 enters the same setup itself and sends each
command right before making the same call (Driver.call). Commands carry no data (the ranks build identical seeded
inputs), so sending one costs a queue put (~0.1 ms of host time; the ranks meet at the first collective).

One group serves many setups (one per benchmark) because a process that destroys its NCCL group and joins a new
one is not a path PyTorch supports well: on 2 H200s (torch 2.11, 2026-11-30) the second group's
`init_device_mesh` -> `split_group` crashed the pytest process with a segmentation fault
(perf/results/h200-session4/call2-perf-parallel-baseline.log). A setup that fails leaves the workers in an
unknown state (one may wait at a collective rank 0 never reaches), so the group is then marked broken: later
`mirror` calls raise LaunchError naming the first failure, instead of hanging or re-initializing.

Shutting down: every rank destroys its group at the same time (rank 0 sends "stop", destroys its own, then joins
the workers). NCCL's communicator teardown waits for the other ranks of the node, so rank 0 joining the workers
before destroying its own group deadlocked until the workers were terminated (exit -15; same log).

`drive(setup, *args, nprocs=...)` is the one-setup form: a group with one mirror.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any

from fluxperf.parallel_launch import LaunchError, check_launch, free_port, join_group, worker_env

STOP, LEAVE, ENTER = "stop", "leave", "enter"


class Driver:
    """Rank 0's handle on the workers inside one mirrored setup (see MirrorGroup.mirror).

    Attributes:
        world_size: processes in the group (this one included).
        backend: "nccl" or "gloo".
        calls: commands sent so far in this setup, by name.
    """

    def __init__(self, world_size: int, backend: str, commands: list, replies, procs: list):
        self.world_size, self.backend = world_size, backend
        self._commands, self._replies, self._procs = commands, replies, procs
        self.calls: dict[str, int] = {}
        self.open = True  # False once its mirror block has exited

    def call(self, name: str) -> None:
        """Tell every worker to run its command `name` (non-blocking); call right before making the same call.

        Raises:
            LaunchError: the driver's mirror block has exited, or a worker has failed (its rank and traceback), or
                exited.
        """
        if not self.open:
            raise LaunchError(f"driver.call({name!r}) after its mirror block exited: the setup is gone on every rank. "
                              "Fix: make the calls inside `with group.mirror(...) as driver:`.")
        self.check()
        for queue in self._commands:
            queue.put(name)
        self.calls[name] = self.calls.get(name, 0) + 1

    def check(self, alive: bool = True) -> None:
        """Raise LaunchError if a worker reported an error or (alive=True) is no longer running."""
        while not self._replies.empty():
            rank, text = self._replies.get()
            raise LaunchError(f"mirror rank {rank} of {self.world_size} ({self.backend}) failed:\n{text}")
        for rank, proc in enumerate(self._procs if alive else [], start=1):
            if not proc.is_alive():
                raise LaunchError(f"mirror rank {rank} of {self.world_size} ({self.backend}) exited with code "
                                  f"{proc.exitcode} before rank 0 stopped it")


class MirrorGroup:
    """This process as rank 0 and the mirroring workers, in one process group until the group is closed.

    Attributes:
        world_size, backend: as Driver.
        broken: None while usable, else why a setup failed (later mirrors are refused with it).
        setups: setups entered so far.
    """

    def __init__(self, world_size: int, backend: str, commands: list, replies, procs: list):
        self.world_size, self.backend = world_size, backend
        self._commands, self._replies, self._procs = commands, replies, procs
        self.broken: str | None = None
        self.setups = 0
        self.active = False  # a mirror block is open (the workers run one setup at a time)
        self.closed = False  # mirror_group's block has exited: the workers are gone

    @property
    def worker_pids(self) -> list[int | None]:
        """The workers' process ids, rank 1 first (the same for every setup of the group)."""
        return [proc.pid for proc in self._procs]

    @contextlib.contextmanager
    def mirror(self, setup: Callable[..., Any], *args: Any) -> Iterator[Driver]:
        """Have every worker enter `setup(rank, world_size, *args)` and mirror rank 0's calls until exit.

        Rank 0 enters the same setup itself, inside this block. On a normal exit the workers leave their setup;
        on an error the group is marked broken (the error propagates).

        Raises:
            LaunchError: the group is broken (the first failure named), or a worker failed.
        """
        if self.closed:
            raise LaunchError("the mirror group is closed (its mirror_group block has exited; the workers are gone). "
                              "Fix: enter group.mirror(...) inside `with mirror_group(...) as group:`.")
        if self.active:
            raise LaunchError("group.mirror(...) inside another mirror of the same group: the workers run one setup at "
                              "a time. Fix: leave the open `with group.mirror(...)` block before entering the next.")
        if self.broken is not None:
            raise LaunchError(f"the mirror group of {self.world_size} ranks is broken by an earlier failure "
                              f"({self.broken}); this setup is not run. Fix: see that failure first.")
        driver = Driver(self.world_size, self.backend, self._commands, self._replies, self._procs)
        driver.check()
        try:
            pickle.dumps((ENTER, setup, args))  # the workers unpickle it: check before any worker enters
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise LaunchError(f"setup {getattr(setup, '__qualname__', setup)!r} or its arguments cannot be sent to "
                              f"the workers ({type(exc).__name__}: {exc}). Fix: a module-level setup function and "
                              "picklable arguments (tensors on the CPU).") from None
        for queue in self._commands:
            queue.put((ENTER, setup, args))
        self.setups += 1
        self.active = True
        try:
            yield driver
            for queue in self._commands:
                queue.put(LEAVE)
            driver.check()  # a worker that failed in its setup, or after rank 0's last call
        except BaseException as exc:
            self.broken = _first_line(exc)
            raise
        finally:
            driver.open, self.active = False, False


def _first_line(exc: BaseException) -> str:
    """The failure as the group remembers it: the exception's type and its first line that says something (a worker's
    report starts with "mirror rank R of N failed:" and ends with the worker's own error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1 and text.endswith("failed:"):
        text = f"{text} {lines[-1]}"
    return f"{type(exc).__name__}: {text}"[:300]


def _mirror_worker(rank: int, world_size: int, port: int, backend: str, timeout_s: float, commands,
                   replies) -> None:
    import traceback

    try:
        import torch.distributed as dist

        join_group(rank, world_size, port, backend, timeout_s)
        try:
            while (message := commands.get()) != STOP:
                _, setup, args = message  # (ENTER, setup, args)
                with setup(rank, world_size, *args) as entered:
                    table = getattr(entered, "commands", entered)  # a dict, or an object carrying one
                    while (name := commands.get()) != LEAVE:
                        if name == STOP:
                            raise LaunchError("stopped inside a setup: rank 0 failed in it")
                        if name not in table:
                            raise LaunchError(f"command {name!r} is not one of {sorted(table)} (the setup's table)")
                        table[name]()
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to rank 0 (Driver.check), then the process exits non-zero
        replies.put((rank, traceback.format_exc()))
        raise SystemExit(1) from None


@contextlib.contextmanager
def mirror_group(nprocs: int, backend: str = "nccl", timeout_s: float = 1800,
                 stop_timeout_s: float = 120) -> Iterator[MirrorGroup]:
    """Make this process rank 0 of `nprocs`, start ranks 1..nprocs-1 as mirroring workers; yield the group.

    This process gets the rendezvous and multicast-off variables (restored on exit), sets cuda:0 (nccl) and
    joins the process group. On exit: a healthy group sends "stop", destroys this process's group while the
    workers destroy theirs, and joins them (terminated after stop_timeout_s); a broken one terminates the
    workers first, then destroys this process's group.

    Args:
        nprocs: processes = GPUs (2..8; fluxperf.parallel_launch.check_launch).
        backend: "nccl" (one GPU per rank) or "gloo" (CPU).
        timeout_s: torch.distributed's collective timeout, also bounding the rendezvous.
        stop_timeout_s: how long a worker may take to stop before it is terminated.
    Raises:
        LaunchError, UnavailableError: see check_launch; LaunchError when this process is already in a group,
            or a worker failed (also on exit).
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    check_launch(nprocs, backend)
    if dist.is_initialized():
        raise LaunchError("mirror_group(): this process is already in a process group. Fix: destroy it first "
                          "(torch.distributed.destroy_process_group()).")
    port = free_port()
    ctx = mp.get_context("spawn")
    commands = [ctx.SimpleQueue() for _ in range(nprocs - 1)]
    replies = ctx.SimpleQueue()
    procs = [ctx.Process(target=_mirror_worker, daemon=True, name=f"fluxperf-mirror-{rank}",
                         args=(rank, nprocs, port, backend, timeout_s, commands[rank - 1], replies))
             for rank in range(1, nprocs)]
    saved = {k: os.environ.get(k) for k in worker_env(0, nprocs, port)}
    group = MirrorGroup(nprocs, backend, commands, replies, procs)
    failed = False
    try:
        for proc in procs:
            proc.start()
        join_group(0, nprocs, port, backend, timeout_s)
        yield group
    except BaseException:
        failed = True
        raise
    finally:
        _close(group, procs, commands, failed or group.broken is not None, stop_timeout_s)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    Driver(nprocs, backend, commands, replies, procs).check(alive=False)
    codes = {rank: p.exitcode for rank, p in enumerate(procs, start=1) if p.exitcode != 0}
    if codes:
        raise LaunchError(f"mirror ranks exited with codes {codes} (rank: code) after 'stop'")


def _close(group: MirrorGroup, procs: list, commands: list, broken: bool, stop_timeout_s: float) -> None:
    """Stop the workers and leave the group (see mirror_group: concurrent destroy when healthy)."""
    import torch.distributed as dist

    group.closed = True
    if broken:  # a worker may wait at a collective rank 0 never reaches: it cannot take part in a teardown
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    else:
        for queue, proc in zip(commands, procs):
            if proc.is_alive():
                queue.put(STOP)
    if dist.is_initialized():
        dist.destroy_process_group()
    for proc in procs:
        proc.join(stop_timeout_s if not broken else 5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


@contextlib.contextmanager
def drive(setup: Callable[..., Any], *args: Any, nprocs: int, backend: str = "nccl",
          timeout_s: float = 1800, stop_timeout_s: float = 120) -> Iterator[Driver]:
    """One mirrored setup in its own group: `mirror_group(...)` then `group.mirror(setup, *args)`.

    Raises:
        as mirror_group and MirrorGroup.mirror.
    """
    with mirror_group(nprocs, backend, timeout_s, stop_timeout_s) as group, group.mirror(setup, *args) as driver:
        yield driver
