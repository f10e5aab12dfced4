#!/usr/bin/env python3
"""Time attention kernels at FLUX shapes and measure their error vs an fp32 reference; table + JSON.

Shapes (batch, seq, 24 heads, head_dim 128): FLUX 1024x1024 (4096 image + 512 text tokens), the same at batch 2,
and Kontext 1024x1024 (512 + 2 x 4096). Methods: SDPA cuDNN bf16, SDPA flash bf16, FA3 bf16 (fluxperf::fa3),
FA3 fp8 unscaled and per-head scaled (fluxperf::fa3_fp8, the cast included). Timing: CUDA events around each call,
warm-up excluded, median (and p10/p90) of --reps calls. Error: relative L2 vs SDPA in fp32 (no TF32).

A method that fails is recorded with its error and makes the script exit 1 (after the JSON is written).

Run on the H100 (about 20 s):
    python scripts/probes/bench_attention.py            # writes $OUT/attention.json
    python scripts/probes/bench_attention.py --out results/attention.json --reps 50
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from fluxperf.io import atomic_write_json  # noqa: E402  (after the path line: works from an uninstalled checkout)

HEADS, HEAD_DIM = 24, 128
SHAPES = {  # name -> (batch, seq)
    "flux_1024": (1, 512 + 4096),
    "flux_1024_b2": (2, 512 + 4096),
    "kontext_1024": (1, 512 + 2 * 4096),
}


def _methods():
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fluxperf.steps.attention import ops

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel([backend]):
                return ops.sdpa_bshd(q, k, v)
        return run

    return {
        "sdpa_cudnn_bf16": sdpa(SDPBackend.CUDNN_ATTENTION),
        "sdpa_flash_bf16": sdpa(SDPBackend.FLASH_ATTENTION),
        "fa3_bf16": lambda q, k, v: torch.ops.fluxperf.fa3(q, k, v, None),
        "fa3_fp8_unscaled": lambda q, k, v: torch.ops.fluxperf.fa3_fp8(q, k, v, None, False),
        "fa3_fp8_scaled": lambda q, k, v: torch.ops.fluxperf.fa3_fp8(q, k, v, None, True),
    }


def time_cuda(fn, args, warmup: int, reps: int) -> list[float]:
    """Per-call times in ms (CUDA events), after `warmup` untimed calls."""
    import torch

    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def bench_shape(name, batch, seq, methods, timer, device="cuda", heads=HEADS) -> list[dict]:
    """Rows for one shape: error vs fp32 and `timer(fn, args)` -> list of ms, per method."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fluxperf.steps.attention import fp8, ops

    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(batch, seq, heads, HEAD_DIM, generator=g, device=device, dtype=torch.bfloat16)
               for _ in range(3))
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        ref = ops.sdpa_bshd(q.float(), k.float(), v.float())
    flop = 4 * batch * heads * seq * seq * HEAD_DIM  # QK^T and PV
    rows = []
    for method, fn in methods.items():
        row = {"shape": name, "batch": batch, "seq": seq, "heads": heads, "head_dim": HEAD_DIM, "method": method}
        try:
            out = fn(q, k, v)
            if tuple(out.shape) != tuple(q.shape):
                raise RuntimeError(f"output shape {tuple(out.shape)} != {tuple(q.shape)}")
            row["rel_err_vs_fp32"] = fp8.relative_error(out, ref)
            row["rel_err_per_batch_element"] = [fp8.relative_error(out[i], ref[i]) for i in range(batch)]
            times = timer(fn, (q, k, v))
            med = statistics.median(times)
            row.update(ok=True, median_ms=med, p10_ms=_percentile(times, 10), p90_ms=_percentile(times, 90),
                       min_ms=min(times), reps=len(times), tflops=flop / (med * 1e-3) / 1e12)
        except Exception as exc:  # recorded, and the run exits 1 (a failed scenario must not vanish)
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
    return rows


def environment() -> dict:
    import torch

    from fluxperf.steps.attention import ops

    props = torch.cuda.get_device_properties(0)
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": props.name,
            "capability": f"{props.major}.{props.minor}", "fa3_module": ops.fa3_module_name(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def gpu_state() -> dict | None:
    """Temperature, SM clock, power and throttle reasons from NVML (None if nvidia-ml-py is missing)."""
    from fluxperf.optional import probe

    if not probe("pynvml"):
        return None
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # e.g. no NVML library: the timings stand, the clock facts are missing
        return {"error": str(exc)}
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(torch_device_index())
        return {"temp_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1000,
                "clocks_event_reasons": int(pynvml.nvmlDeviceGetCurrentClocksEventReasons(h))}
    finally:
        pynvml.nvmlShutdown()


def torch_device_index() -> int:
    import torch

    return torch.cuda.current_device()


def print_table(rows) -> None:
    print(f"{'shape':<14}{'method':<19}{'median ms':>10}{'p10':>8}{'p90':>8}{'TFLOP/s':>9}{'rel err':>10}")
    for r in rows:
        if r["ok"]:
            print(f"{r['shape']:<14}{r['method']:<19}{r['median_ms']:>10.3f}{r['p10_ms']:>8.3f}{r['p90_ms']:>8.3f}"
                  f"{r['tflops']:>9.0f}{r['rel_err_vs_fp32']:>10.4f}")
        else:
            print(f"{r['shape']:<14}{r['method']:<19}  FAILED: {r['error']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(os.environ.get("OUT", "fluxperf-out")) / "attention.json"
    parser.add_argument("--out", type=Path, default=default_out, help=f"JSON output (default {default_out})")
    parser.add_argument("--reps", type=int, default=30, help="timed calls per method and shape (>= 20)")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if args.reps < 20:
        parser.error(f"--reps={args.reps}: use at least 20 so the median is stable")

    import torch

    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.set_float32_matmul_precision("highest")  # the fp32 reference must not use TF32
    methods = _methods()
    rows, state_before = [], gpu_state()

    def timer(fn, fn_args):
        return time_cuda(fn, fn_args, args.warmup, args.reps)

    for name, (batch, seq) in SHAPES.items():
        rows += bench_shape(name, batch, seq, methods, timer)
        torch.cuda.empty_cache()
    result = {"benchmark": "attention", "environment": environment(),
              "gpu_state": {"before": state_before, "after": gpu_state()}, "timing": "CUDA events, median of reps, "
              "warm-up excluded; rel_err = ||out - ref||_2 / ||ref||_2, ref = SDPA fp32", "rows": rows}
    atomic_write_json(args.out, result)
    print_table(rows)
    print(f"wrote {args.out}")
    failed = [f"{r['shape']}/{r['method']}" for r in rows if not r["ok"]]
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
