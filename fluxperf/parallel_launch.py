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

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
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


def join_group(rank: int, world_size: int, port: int, backend: str, timeout_s: float) -> None:
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

    join_group(rank, world_size, port, backend, timeout_s)
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


def rank_device(rank: int) -> str:
    """cuda:<rank> where the launcher pinned a GPU to each rank (NCCL), else cpu (gloo)."""
    import torch.distributed as dist

    return f"cuda:{rank}" if dist.get_backend() == "nccl" else "cpu"
