#!/usr/bin/env python3
"""Full-size FLUX transformer: torch.export + AOTInductor round trip, CUDA-graph step time, cache reuse.

Builds the synthetic full-size schnell bf16 pipeline (11.9 B-parameter transformer, random weights, no text
encoders) on CUDA, then:
  1. eager reference output and eager step time at the spec's shapes (fluxperf.model.shapes inputs);
  2. apply_export (cold: export + AOTI compile + load) -> relative error vs eager; step time under the CUDA-graph
     runner and of the bare package (CUDA events, median of --iters);
  3. remove_export + apply_export again: must be a cache hit; load time and relative error;
  4. optionally (--second HxW, if the time budget allows) a second resolution, cold.
Results go to --out as JSON (atomic write). Exit status 1 if any relative error exceeds --tol or the second load
is not a cache hit; 2 if the GPU/stack is unavailable.

Run (H100, about 4-6 minutes cold):
    python scripts/probes/bench_export.py --cache-dir /tmp/aoti --out $OUT/export.json [--second 768x1360] [--vae]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# the error of a bf16 step is set by bf16 rounding of the activations, not by export: torch.compile vs eager on
# this model measured ~0.005-0.007 relative (DEVICE.md: fused QKV + FA3 fp8, eager, 0.0065); 0.02 is a 3x margin
DEFAULT_TOL = 0.02


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "export.json"))
    p.add_argument("--cache-dir", default=None, help="package cache (default: $FLUXPERF_CACHE or ~/.cache/fluxperf/aoti)")
    p.add_argument("--variant", default="schnell", choices=["schnell", "dev", "kontext"])
    p.add_argument("--size", default="1024x1024", help="HxW of the first (timed) resolution")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--second", default=None, help="optional second resolution HxW, built cold if time allows")
    p.add_argument("--vae", action="store_true", help="also export the VAE decoder")
    p.add_argument("--iters", type=int, default=20, help="timed steps per measurement (median reported), >= 10")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help="max relative error vs eager")
    p.add_argument("--weights", default=None, choices=["user", "copy", "so"],
                   help="how packages get their weights (default: $FLUXPERF_EXPORT_WEIGHTS, else user)")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip --second once this much time has passed")
    return p.parse_args(argv)


def hw(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def rel_err(out, ref) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)


def time_package(package, inputs: dict, iters: int) -> dict:
    """Step time of the loaded package called directly (no CUDA graph), same positional inputs as the adapter's."""
    from fluxperf.bench.timing import time_fn
    from fluxperf.steps.export.call import TRANSFORMER_INPUTS

    args = [inputs[n] for n in TRANSFORMER_INPUTS if n in inputs]
    return time_fn(lambda: package(*args), warmup=2, rounds=iters, device="cuda").summary()


def measure(pipe, spec, recipe, cache_dir, iters: int, t0: float, *, reload: bool, weights=None) -> dict:
    """Eager reference, cold apply_export, numerics and step times; then (reload) a cached apply_export."""
    import torch

    from fluxperf.bench.timing import time_fn
    from fluxperf.measure.runner import free_gpu
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs
    from fluxperf.steps.export.apply import apply_export, remove_export

    inputs = transformer_inputs(spec, dims_of_pipeline(pipe), device="cuda", dtype=torch.bfloat16)
    res = {"spec": spec.key()}
    with torch.no_grad():
        ref = pipe.transformer(**inputs)[0]
        res["eager_ms"] = time_fn(lambda: pipe.transformer(**inputs), warmup=1, rounds=5, device="cuda").summary()
    log(f"{spec.key()}: eager {res['eager_ms']['median_ms']:.1f} ms", t0)

    start = time.perf_counter()
    report = apply_export(pipe, recipe, spec, cache_dir=cache_dir, weights=weights)
    res["apply_s"] = time.perf_counter() - start
    res.update({k: report[k] for k in ("packages", "cache", "build_s", "load_s", "cudagraphs", "weights")})
    res["package_bytes"] = {c: Path(p).stat().st_size for c, p in report["packages"].items()}
    log(f"apply_export: {report['cache']} build {report['build_s']} load {report['load_s']}", t0)
    runner = report["runners"]["transformer"]
    with torch.no_grad():
        start = time.perf_counter()
        out = pipe.transformer(**inputs)[0]
        torch.cuda.synchronize()
        res["first_call_s"] = time.perf_counter() - start  # graph warm-up + capture + replay
        res["rel_err_vs_eager"] = rel_err(out, ref)
        res["graph_ms"] = time_fn(lambda: pipe.transformer(**inputs), warmup=2, rounds=iters, device="cuda").summary()
        res["package_ms"] = time_package(runner.fn, inputs, iters)
    res["graph_stats"] = runner.stats.as_dict()
    log(f"rel err {res['rel_err_vs_eager']:.4g}; step: graph {res['graph_ms']['median_ms']:.1f} ms, "
        f"package {res['package_ms']['median_ms']:.1f} ms", t0)
    remove_export(pipe)
    del report, runner, out
    free_gpu()

    if reload:
        start = time.perf_counter()
        again = apply_export(pipe, recipe, spec, cache_dir=cache_dir, weights=weights)
        res["reload"] = {"apply_s": time.perf_counter() - start, "cache": again["cache"], "load_s": again["load_s"]}
        with torch.no_grad():
            res["reload"]["rel_err_vs_eager"] = rel_err(pipe.transformer(**inputs)[0], ref)
        log(f"cached apply_export: {again['cache']} in {res['reload']['apply_s']:.2f} s", t0)
        remove_export(pipe)
        del again
        free_gpu()
    return res


def measure_all(args, pipe, recipe, t0: float, result: dict) -> list[dict]:
    """The first resolution (cold, then a cached reload) and, if the time budget allows, --second (cold)."""
    from fluxperf.model.shapes import ShapeSpec

    runs = [measure(pipe, ShapeSpec(args.variant, *hw(args.size), args.batch), recipe, args.cache_dir, args.iters,
                    t0, reload=True, weights=args.weights)]
    if args.second:
        if time.perf_counter() - t0 < args.budget_s:
            runs.append(measure(pipe, ShapeSpec(args.variant, *hw(args.second), args.batch), recipe, args.cache_dir,
                                args.iters, t0, reload=False, weights=args.weights))
        else:
            result["second_skipped"] = f"time budget {args.budget_s} s used up"
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    import torch

    from fluxperf.env import fingerprint
    from fluxperf.io import atomic_write_json
    from fluxperf.measure.runner import prepared
    from fluxperf.recipe import Recipe

    result = {"script": "bench_export", "args": vars(args), "ok": False}
    if not torch.cuda.is_available():
        result["error"] = "no CUDA device: AOTInductor export is a GPU rung"
        atomic_write_json(args.out, result)
        print(result["error"], file=sys.stderr)
        return 2
    result["env"] = fingerprint(with_gpu=True)
    recipe = Recipe.from_dict({"name": "bench_export", "dtype": "bfloat16",
                               "export": {"enabled": True, "vae": args.vae, "cudagraphs": True}})
    with prepared(args.variant, "full", None, device="cuda", dtype="bfloat16") as built:  # freed afterwards
        result["build_pipeline_s"] = built.build_s
        log(f"pipeline built in {result['build_pipeline_s']:.1f} s", t0)
        runs = measure_all(args, built.pipe, recipe, t0, result)
    result["runs"] = runs
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    errors = [r["rel_err_vs_eager"] for r in runs] + [runs[0]["reload"]["rel_err_vs_eager"]]
    problems = [f"rel error {e:.4g} > tol {args.tol}" for e in errors if not e <= args.tol]
    if set(runs[0]["reload"]["cache"].values()) != {"hit"}:
        problems.append(f"second load was not a cache hit: {runs[0]['reload']['cache']}")
    result.update(ok=not problems, problems=problems, total_s=time.perf_counter() - t0)
    atomic_write_json(args.out, result)
    log(f"wrote {args.out}: {'OK' if not problems else problems}", t0)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
