"""Run a function in one process per GPU under torch.distributed, and hand back rank 0's result (issue 16).

    result = launch(fn, arg1, arg2, nprocs=2)             # fn(rank, world_size, arg1, arg2) in each process

Each process is started with torch.multiprocessing (start method "spawn": no CUDA state is inherited), gets the
rendezvous variables (MASTER_ADDR=127.0.0.1, MASTER_PORT: a free port found here, RANK, LOCAL_RANK, WORLD_SIZE)
and the multicast-off variables of the multi-GPU H200 machines (../shared/DEVICE.md: NVLink multicast stays off,
MULTICAST_OFF below, set whatever the caller's environment says), sets its CUDA device to its rank (`cuda:<rank>`
of the visible devices), initializes the process group (NCCL on GPUs; gloo on CPU, for tests) and calls `fn`.
Rank 0's return value is pickled to a temporary file and returned; every rank must make the same collective
calls (the same recipe, inputs and number of calls), or the others wait in a collective.

Errors: fewer visible GPUs than processes -> UnavailableError before anything starts; a rank that raises ->
LaunchError naming the rank and the worker's traceback (torch.multiprocessing terminates the other ranks).

`fn` and its arguments must be picklable (a module-level function; tensors on the CPU).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fluxperf.errors import FluxperfError, UnavailableError

# ../shared/DEVICE.md: on the 2- and 4-GPU H200 machines NVLink multicast must stay off.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
BACKENDS = ("nccl", "gloo")
MAX_PROCS = 8  # one host's GPUs


class LaunchError(FluxperfError, RuntimeError):
    """A launched rank failed (its rank and traceback in the message), or the launch arguments are wrong."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (bound and released; the rendezvous binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def worker_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The environment variables a rank runs with (torch.distributed's env:// rendezvous + MULTICAST_OFF)."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size), **MULTICAST_OFF}


def check_launch(nprocs: int, backend: str) -> None:
    """Refuse a launch that cannot work, before any process starts.

    Raises:
        LaunchError: nprocs outside 2..MAX_PROCS, or an unknown backend.
        UnavailableError: backend "nccl" with fewer visible CUDA GPUs than processes.
    """
    if not isinstance(nprocs, int) or isinstance(nprocs, bool) or not 2 <= nprocs <= MAX_PROCS:
        raise LaunchError(f"nprocs={nprocs!r}: a parallel launch runs 2 to {MAX_PROCS} processes (one per GPU). "
                          "Fix: nprocs = ulysses_degree * ring_degree of the recipe.")
    if backend not in BACKENDS:
        raise LaunchError(f"backend={backend!r} is not one of {BACKENDS}. Fix: 'nccl' on GPUs, 'gloo' on CPU.")
    if backend == "nccl":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count < nprocs:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise UnavailableError(
                f"a {nprocs}-process NCCL launch", f"this machine shows {count} CUDA GPU(s)"
                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""),
                f"run on a machine with {nprocs} or more GPUs (or widen CUDA_VISIBLE_DEVICES); on CPU use "
                "backend='gloo'")


def launch(fn: Callable[..., Any], *args: Any, nprocs: int, backend: str = "nccl", timeout_s: float = 1800) -> Any:
    """Run fn(rank, world_size, *args) in `nprocs` processes and return rank 0's result.

    Args:
        fn: a picklable (module-level) function; its result on rank 0 must be picklable.
        args: picklable arguments (keep tensors on the CPU).
        nprocs: processes = GPUs (2..MAX_PROCS).
        backend: "nccl" (one GPU per rank) or "gloo" (CPU).
        timeout_s: torch.distributed's collective timeout (a rank stuck longer raises instead of hanging).
    Raises:
        LaunchError, UnavailableError: see check_launch; LaunchError when a rank raised.
    """
    import torch.multiprocessing as mp

    check_launch(nprocs, backend)
    with tempfile.TemporaryDirectory(prefix="fluxperf-launch-") as tmp:
        result = Path(tmp) / "rank0.pkl"
        try:
            mp.start_processes(_worker, args=(fn, args, nprocs, free_port(), backend, timeout_s, str(result)),
                               nprocs=nprocs, join=True, start_method="spawn")
        except mp.ProcessRaisedException as exc:
            raise LaunchError(f"rank {exc.error_index} of {nprocs} ({backend}) failed:\n{exc}") from None
        except mp.ProcessExitedException as exc:
            raise LaunchError(f"rank {exc.error_index} of {nprocs} ({backend}) exited with code {exc.exit_code} "
                              f"(signal {exc.signal_name}) without a Python error (killed, or a native crash)"
                              ) from None
        if not result.exists():
            raise LaunchError(f"rank 0 of {nprocs} finished without a result. Fix: check the launched function.")
        return pickle.loads(result.read_bytes())


def _join_group(rank: int, world_size: int, port: int, backend: str, timeout_s: float) -> None:
    """This process joins the group as `rank`: the environment first (NCCL reads it at init_process_group), then
    under NCCL the rank's own GPU (cuda:<rank>) as its device."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    os.environ.update(worker_env(rank, world_size, port))
    device = None
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                            device_id=device)


def _worker(rank: int, fn, args, world_size: int, port: int, backend: str, timeout_s: float, result: str) -> None:
    import torch.distributed as dist

    _join_group(rank, world_size, port, backend, timeout_s)
    try:
        out = fn(rank, world_size, *args)
        if rank == 0:
            tmp = result + ".tmp"
            Path(tmp).write_bytes(pickle.dumps(out))
            os.replace(tmp, result)
    finally:
        dist.destroy_process_group()


def scaling_efficiency(single_ms: float, parallel_ms: float, world_size: int) -> float:
    """single-GPU time / (N x parallel time): 1.0 is perfect scaling, 0.5 means N GPUs are no faster than one.

    Raises:
        ValueError: a non-positive time or a world size below 2.
    """
    if not (single_ms > 0 and parallel_ms > 0) or world_size < 2:
        raise ValueError(f"scaling_efficiency({single_ms!r}, {parallel_ms!r}, {world_size!r}): times must be > 0 ms "
                         "and the world size >= 2. Fix: pass the medians of the two measurements.")
    return single_ms / (world_size * parallel_ms)


# -- driver / mirror: rank 0 in this process, the other ranks repeat its calls ------------------------------
# A benchmark harness times a function in the pytest process, so that process must be rank 0 and the other ranks
# must make the same calls (their collectives pair with rank 0's). `drive` starts ranks 1..N-1 as worker
# processes; each enters `setup(rank, world_size, *args)`, a context manager yielding {command name: callable} (or an
# object with that dict as `.commands`),
# and then runs the commands rank 0 sends through its queue, in order, until "stop". Rank 0 enters the same setup
# itself and sends a command right before making the same call (Driver.call), so every rank runs the same calls
# in the same order. Commands carry no data (the ranks build identical seeded inputs), so sending one costs a
# queue put (~0.1 ms of host time, before rank 0's own call; the ranks meet at the first collective).
STOP = "stop"


class Driver:
    """Rank 0's handle on the mirroring workers (see `drive`).

    Attributes:
        world_size: processes in the group (this one included).
        backend: "nccl" or "gloo".
        calls: commands sent so far, by name.
    """

    def __init__(self, world_size: int, backend: str, commands: list, replies, procs: list):
        self.world_size, self.backend = world_size, backend
        self._commands, self._replies, self._procs = commands, replies, procs
        self.calls: dict[str, int] = {}

    def call(self, name: str) -> None:
        """Tell every worker to run its command `name` (non-blocking); call right before making the same call.

        Raises:
            LaunchError: a worker has failed (its rank and traceback), or exited.
        """
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


@contextlib.contextmanager
def drive(setup: Callable[..., Any], *args: Any, nprocs: int, backend: str = "nccl",
          timeout_s: float = 1800, stop_timeout_s: float = 120) -> Iterator[Driver]:
    """Make this process rank 0 of `nprocs` and start ranks 1..nprocs-1 mirroring its calls; yield a Driver.

    This process gets the rendezvous and multicast-off variables (restored on exit), sets cuda:0 (nccl) and
    joins the process group; the caller then enters `setup(0, nprocs, *args)` itself and, before each call it
    makes, sends the same command with `driver.call(name)`. On exit every worker is sent "stop" (leaves its setup,
    destroys its process group) and joined; this process destroys its group.

    Args:
        setup: a picklable (module-level) context-manager function `setup(rank, world_size, *args)` yielding
            {command name: zero-argument callable}; a worker runs it in its own process.
        args: picklable arguments (keep tensors on the CPU).
        nprocs, backend, timeout_s: as `launch` (timeout_s also bounds the rendezvous).
        stop_timeout_s: how long a worker may take to stop before it is terminated.
    Raises:
        LaunchError, UnavailableError: see check_launch; LaunchError when a worker failed (also on exit).
    """

    import torch.distributed as dist
    import torch.multiprocessing as mp

    check_launch(nprocs, backend)
    if dist.is_initialized():
        raise LaunchError("drive(): this process is already in a process group. Fix: destroy it first "
                          "(torch.distributed.destroy_process_group()).")
    port = free_port()
    ctx = mp.get_context("spawn")
    commands = [ctx.SimpleQueue() for _ in range(nprocs - 1)]
    replies = ctx.SimpleQueue()
    procs = [ctx.Process(target=_mirror_worker, daemon=True, name=f"fluxperf-mirror-{rank}",
                         args=(rank, setup, args, nprocs, port, backend, timeout_s, commands[rank - 1], replies))
             for rank in range(1, nprocs)]
    saved = {k: os.environ.get(k) for k in worker_env(0, nprocs, port)}
    driver = Driver(nprocs, backend, commands, replies, procs)
    failed: BaseException | None = None
    try:
        for proc in procs:
            proc.start()
        _join_group(0, nprocs, port, backend, timeout_s)
        yield driver
    except BaseException as exc:
        failed = exc
        raise
    finally:
        for queue, proc in zip(commands, procs):
            if proc.is_alive():
                queue.put(STOP)
        for proc in procs:
            proc.join(stop_timeout_s if failed is None else 5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        if dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if failed is None:
            driver.check(alive=False)  # a worker that failed after rank 0's last call (or while stopping)
            codes = {rank: p.exitcode for rank, p in enumerate(procs, start=1) if p.exitcode != 0}
            if codes:
                raise LaunchError(f"mirror ranks exited with codes {codes} (rank: code) after 'stop'")


def _mirror_worker(rank: int, setup, args, world_size: int, port: int, backend: str, timeout_s: float, commands,
                   replies) -> None:
    import traceback

    try:
        import torch.distributed as dist

        _join_group(rank, world_size, port, backend, timeout_s)
        try:
            with setup(rank, world_size, *args) as entered:
                table = getattr(entered, "commands", entered)  # a dict, or an object carrying one
                while (name := commands.get()) != STOP:
                    if name not in table:
                        raise LaunchError(f"command {name!r} is not one of {sorted(table)} (the setup's table)")
                    table[name]()
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to rank 0 (Driver.check), then the process exits non-zero
        replies.put((rank, traceback.format_exc()))
        raise SystemExit(1) from None


def rank_device(rank: int) -> str:
    """cuda:<rank> where the launcher pinned a GPU to each rank (NCCL), else cpu (gloo)."""
    import torch.distributed as dist

    return f"cuda:{rank}" if dist.get_backend() == "nccl" else "cpu"
