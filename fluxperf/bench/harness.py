"""GPU-side measurement for the perf/ benchmarks: time, watch, count, compare, re-measure once.

`Bench.run(fn, ...)` is the whole protocol for one benchmark (the caller has already built, optimized and
compiled the model, timing the first call):

1. calibration kernels (before), reset peak memory;
2. `benchmark.pedantic` with a CUDA-event clock (warm-up rounds excluded) inside a `GpuMonitor`;
3. peak memory, calibration kernels (after);
4. proxies: recompiles during the timed rounds, graph breaks, CUDA kernels per call (profiler);
   a kernel table when --fluxperf-kernel-tables is given and fluxperf.bench.kernels exists;
5. metrics: TFLOP/s, MFU against the measured bf16 GEMM peak, compile seconds;
6. with a baseline: compare; a suspected regression (or a throttled measurement) is re-measured once, and
   the second measurement decides. The verdict goes to the pytest plugin, which sets the exit status.

Everything heavy is imported inside functions.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path

from fluxperf.bench import calibration as cal
from fluxperf.bench.monitor import GpuMonitor
from fluxperf.bench.stats import iqr


def cuda_event_clock():
    """A pytest-benchmark timer: seconds of GPU time since an anchor event (CUDA events, synchronized).

    Calls before and after the target record events on the current stream, so the difference is the device
    time of everything enqueued in between. A fresh anchor per benchmark keeps the float32 milliseconds of
    cudaEventElapsedTime precise (< 0.01 ms at minutes).
    """
    import torch

    anchor = torch.cuda.Event(enable_timing=True)
    anchor.record()
    anchor.synchronize()

    def cuda_event_clock() -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        return anchor.elapsed_time(event) / 1e3

    return cuda_event_clock


@contextlib.contextmanager
def fresh_compile_cache():
    """A fresh TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR and cleared in-memory caches (a cold compile); removed after.

    Compile workers are restarted so they see the new directories.
    """
    import torch
    import torch._inductor.utils as iu
    from torch._inductor import async_compile

    torch._dynamo.reset()
    getattr(async_compile, "shutdown_compile_workers", lambda: None)()
    fresh = getattr(iu, "fresh_cache", None) or iu.fresh_inductor_cache
    with fresh():
        yield
    torch._dynamo.reset()


@contextlib.contextmanager
def kept_compile_cache(directory: str | os.PathLike):
    """TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR pointed at `directory` (created, kept afterwards) for the block:
    a build stopped part-way (a device command's time limit) resumes from the kernels it already tuned. In-memory
    dynamo state is cleared before and after, compile workers restarted; the previous environment is restored."""
    import torch
    from torch._inductor import async_compile

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    torch._dynamo.reset()
    getattr(async_compile, "shutdown_compile_workers", lambda: None)()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    os.environ["TRITON_CACHE_DIR"] = str(directory / "triton")
    try:
        yield directory
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch._dynamo.reset()
        getattr(async_compile, "shutdown_compile_workers", lambda: None)()


def dynamo_counts() -> dict:
    """Frames compiled, unique graphs and graph breaks so far (torch._dynamo counters)."""
    from torch._dynamo.utils import counters

    return {"frames": counters["frames"].get("total", 0), "unique_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_breaks": sum(counters["graph_break"].values())}


def timed_call(fn) -> float:
    """Wall seconds of one call, GPU work included (synchronized)."""
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def count_cuda_kernels(fn) -> int:
    """CUDA kernels (and memcpy/memset) launched by one call of `fn`, from the profiler."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


def kernel_table_records(fn) -> list[dict]:
    """The kernel table of one call of `fn` (fluxperf.bench.kernels.profile_kernel_table) as records."""
    from fluxperf.bench.kernels import profile_kernel_table

    return profile_kernel_table(fn, warmup=1, iters=2).to_dict(orient="records")


def measure(fn, *, rounds: int, warmup_rounds: int, benchmark=None) -> dict:
    """Calibrate, time (pedantic when `benchmark` is given, else time_fn) under the monitor, calibrate again."""
    import torch

    from fluxperf.bench.timing import time_fn

    before = cal.run_calibration()
    torch.cuda.reset_peak_memory_stats()
    with GpuMonitor() as mon:
        if benchmark is not None:
            benchmark._timer = cuda_event_clock()  # pytest-benchmark reads the timer when it makes each runner
            benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
            samples_s = list(benchmark.stats.stats.data)
        else:
            samples_s = [ms / 1e3 for ms in time_fn(fn, warmup=warmup_rounds, rounds=rounds, device="cuda").samples_ms]
    peak = torch.cuda.max_memory_allocated() / 2**30
    after = cal.run_calibration()
    return {"samples_s": samples_s, "calibration": {"before": before, "after": after}, "monitor": mon.summary,
            "peak_mem_gib": round(peak, 3)}


class Bench:
    """Runs the protocol for one benchmark inside a test.

    Args:
        request: the pytest request (config holds the plugin's state).
        benchmark: pytest-benchmark's fixture.
    """

    def __init__(self, request, benchmark):
        self.request, self.benchmark = request, benchmark

    def run(self, fn, *, rounds: int, warmup_rounds: int = 2, flops: float | None = None, first_call_s: float | None = None,
            setup_s: float = 0.0, warm_compile=None, info: dict | None = None, dyn_before: dict | None = None,
            count_kernels: bool = True, extra_proxies: dict | None = None) -> dict:
        """Measure `fn` and record everything into benchmark.extra_info; returns that dict.

        Args:
            fn: one call of the benchmarked work (already compiled/warmed by the caller's first call).
            rounds, warmup_rounds: pedantic rounds (>= 10 so the significance test can reach p < 0.002).
            flops: FLOPs of one call, for TFLOP/s and MFU.
            first_call_s, setup_s: seconds of the first call and of apply(); cold compile = both - steady median.
            warm_compile: callable returning the seconds of a warm recompile (dynamo reset, disk cache hot).
            info: extra facts (rung, recipe, AppliedStack) to store.
            dyn_before: dynamo_counts() taken before apply() (graph breaks and graphs of this benchmark).
            count_kernels: record kernels_per_step (off where the count legitimately varies between calls, e.g.
                a block cache whose cached-step count moves by one; its cached_steps proxy covers that).
            extra_proxies: more deterministic proxies to store and compare (e.g. {"cached_steps": 6}).
        """
        from fluxperf.bench.pytest_plugin import state_of

        state = state_of(self.request.config)
        dyn0 = dynamo_counts()
        m = measure(fn, rounds=rounds, warmup_rounds=warmup_rounds, benchmark=self.benchmark)
        dyn1 = dynamo_counts()
        median_s = statistics.median(m["samples_s"])
        extra = self.benchmark.extra_info
        extra.update(info or {})
        extra.update({"fluxperf": 1, "median_ms": median_s * 1e3, "iqr_ms": iqr([x * 1e3 for x in m["samples_s"]]),
                      "rounds": len(m["samples_s"]), "clock": "cuda_events",
                      "calibration": m["calibration"], "monitor": m["monitor"]})
        base = dyn_before or dyn0
        extra["proxies"] = {"peak_mem_gib": m["peak_mem_gib"], "recompiles": dyn1["frames"] - dyn0["frames"],
                            "graph_breaks": dyn1["graph_breaks"] - base["graph_breaks"],
                            "unique_graphs": dyn1["unique_graphs"] - base["unique_graphs"],
                            **({"kernels_per_step": count_cuda_kernels(fn)} if count_kernels else {}),
                            **(extra_proxies or {})}
        if state.kernel_tables:
            extra["kernel_table"] = kernel_table_records(fn)
        extra["metrics"] = self._metrics(m, median_s, flops, first_call_s, setup_s, warm_compile)
        current = {"fullname": self.benchmark.fullname, "stats": {"data": m["samples_s"]}, "extra_info": extra}
        comparison = self._compare(current, fn, rounds, warmup_rounds)
        if comparison is not None:
            extra["verdict"] = comparison.to_dict()
        return extra

    def _metrics(self, m, median_s, flops, first_call_s, setup_s, warm_compile) -> dict:
        from fluxperf.bench.flops import mfu, tflops

        out = {}
        if flops:
            peak = statistics.fmean(c["bf16_gemm"]["tflops"] for c in m["calibration"].values())
            out.update(flops=flops, tflops=tflops(flops, median_s * 1e3), mfu=mfu(flops, median_s * 1e3, peak),
                       peak_bf16_tflops=peak)
        if first_call_s is not None:
            out["compile_cold_s"] = max(0.0, setup_s + first_call_s - median_s)
        if warm_compile is not None:
            out["compile_warm_s"] = max(0.0, warm_compile() - median_s)
        return out

    def _compare(self, current: dict, fn, rounds: int, warmup_rounds: int):
        """Judge against the baseline (if any); a suspected regression is re-measured once (time_fn, CUDA events)."""
        from fluxperf.bench.pytest_plugin import judge

        def remeasure() -> dict:
            again = measure(fn, rounds=rounds, warmup_rounds=warmup_rounds)
            extra = {**current["extra_info"], "calibration": again["calibration"], "monitor": again["monitor"]}
            return {**current, "stats": {"data": again["samples_s"]}, "extra_info": extra}

        return judge(self.request.config, current, remeasure=remeasure)
