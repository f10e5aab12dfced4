"""Block caching on the H100: full-size synthetic FLUX.1-dev, 1024x1024, 28 steps, guidance 3.5, bf16, regional compile.

Configurations, all on ONE transformer (built once):
  uncached                      the reference image and latency
  uncached_recompiled           the same, compiled again after a dynamo reset: the recompile floor. Measured on the
                                H100: every compiled configuration, even one caching nothing, landed at ~47.4 dB
                                against the first compilation (eager cache-off runs match bit for bit), i.e. two
                                compilations of the same graphs round differently and 28 steps amplify it
  cache_dit_probe               cache-dit F1B0 with threshold 1e-6: caches nothing; its latency is cache-dit's
                                bookkeeping overhead, its residual diffs are the per-step change of the first block's
                                residual along the uncached trajectory (FBC's metric too), its image must equal the
                                reference
  cache_dit_f12b12/f8b0/f1b0    the ladder's rungs (threshold 0.12, 8 warm-up steps)
  fbc_0.15/0.25/0.4             diffusers' first-block cache
  cache_dit_f1b0_p50, fbc_p50   thresholds at the median of the probe's diffs (F1B0: of the steps after warm-up):
                                random weights may change far more per step than a trained FLUX, so the fixed
                                thresholds may cache nothing; these engage by construction
For each: latency of the whole pipeline call (CUDA events; one warm-up call that also compiles, then --rounds timed
calls, median), steps served from the cache, PSNR/SSIM against the uncached image.

Compile: caches must be applied before torch.compile (fluxperf refuses a compiled transformer), so each configuration
un-compiles the blocks, resets dynamo (drops the previous configuration's graphs and guards), enables its cache and
runs transformer.compile_repeated_blocks(fullgraph=<the cache's COMPILE_HINT>): True for uncached and cache-dit,
False for FBC (its head-block hook graph-breaks). Inductor's on-disk FX-graph cache makes recompiling the identical
block graphs cheap, so only the first configuration pays the full ~20 s.

Run (H100, wheels installed as in DEVICE.md):
    python scripts/probes/bench_cache.py --out $OUT/cache.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from fluxperf.io import atomic_write_json

PROBE_MIN_DB = 60.0  # caching enabled but nothing cached: same block graphs, so (near-)identical images
FLOOR_SLACK_DB = 1.0  # ... or, where recompiling alone moves the image more, within this of the recompile floor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "cache.json"), help="JSON results path")
    p.add_argument("--size", type=int, default=1024, help="image height = width in pixels")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--rounds", type=int, default=3, help="timed calls per configuration (>= 2)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="skip (and report) the configurations that would start after this many seconds")
    p.add_argument("--only", default=None, help="comma-separated configuration names (uncached always runs)")
    p.add_argument("--no-calibrated", action="store_true", help="skip the *_p50 configurations")
    p.add_argument("--model", choices=("full", "tiny"), default="full", help="tiny: a CPU smoke test of this script")
    p.add_argument("--device", default="cuda", help="cuda (CUDA-event timing) or cpu (perf_counter; smoke tests)")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error(f"--rounds={args.rounds}: at least 2 timed calls are needed for a median of steady-state calls")
    return args


def configs() -> list[tuple]:
    """(name, kind, config) in run order; kind is None (uncached), "cache_dit" or "first_block"."""
    from fluxperf.ladder import rung
    from fluxperf.recipe import CacheDitConfig, FirstBlockCacheConfig

    probe = CacheDitConfig(enabled=True, Fn=1, Bn=0, residual_diff_threshold=1e-6, max_warmup_steps=1)
    rungs = {"cache_dit_f12b12": "cache_dit", "cache_dit_f8b0": "cache_dit_f8b0", "cache_dit_f1b0": "cache_dit_f1b0"}
    return ([("uncached", None, None), ("uncached_recompiled", None, None), ("cache_dit_probe", "cache_dit", probe)]
            + [(name, "cache_dit", rung(r).cache_dit) for name, r in rungs.items()]
            + [(f"fbc_{t}", "first_block", FirstBlockCacheConfig(enabled=True, threshold=t)) for t in (0.15, 0.25, 0.4)])


def calibrated_configs(diffs: dict[int, float], warmup: int = 8) -> list[tuple]:
    """F1B0 and FBC at the median of the probe's first-block residual diffs (both decide on that residual):
    FBC over all steps, F1B0 over the steps after its 8 warm-up steps (the only ones it may cache)."""
    from fluxperf.recipe import CacheDitConfig, FirstBlockCacheConfig

    late = [d for step, d in diffs.items() if step >= warmup]
    if not diffs or not late:
        return []
    return [("cache_dit_f1b0_p50", "cache_dit", CacheDitConfig(enabled=True, Fn=1, Bn=0, max_warmup_steps=warmup,
                                                               residual_diff_threshold=_median3(late))),
            ("fbc_p50", "first_block", FirstBlockCacheConfig(enabled=True, threshold=_median3(diffs.values())))]


def _median3(values) -> float:
    return float(f"{statistics.median(values):.3g}")


class Bench:
    """One pipeline, one configuration at a time: enable, compile, warm up, time, measure, disable."""

    def __init__(self, args, pipe, build_s: float):
        """`pipe`: the dev pipeline fluxperf.measure.runner.prepared built (bf16, no text encoders); `build_s`: its build time."""
        import torch

        from fluxperf.model.configs import dims_of_pipeline
        from fluxperf.model.shapes import ShapeSpec, stand_in_prompt_embeds

        self.args, self.torch, self.pipe, self.build_s = args, torch, pipe, build_s
        self.cuda = args.device.startswith("cuda")
        # seeded stand-ins for the T5 (1, 512, 4096) and CLIP pooled (1, 768) embeddings: text encoders stay off
        self.embeds = stand_in_prompt_embeds(ShapeSpec("dev", args.size, args.size), dims_of_pipeline(pipe), seed=0,
                                             device=args.device, dtype=torch.bfloat16)
        self.reference = None

    def call(self) -> np.ndarray:
        a = self.args
        with self.torch.inference_mode():
            return self.pipe(height=a.size, width=a.size, num_inference_steps=a.steps, guidance_scale=3.5,
                             output_type="np", generator=self.torch.Generator().manual_seed(0), **self.embeds).images[0]

    def timed_call(self) -> tuple[float, np.ndarray]:
        torch = self.torch
        if not self.cuda:
            t = time.perf_counter()
            image = self.call()
            return (time.perf_counter() - t) * 1e3, image
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        image = self.call()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end), image

    def run(self, name: str, kind: str | None, cfg) -> dict:
        from torch._dynamo.utils import counters

        report, fullgraph = self._enable(kind, cfg)
        try:
            self.torch._dynamo.reset()
            self.pipe.transformer.compile_repeated_blocks(fullgraph=fullgraph)
            warm_ms, first = self.timed_call()
            graphs_before = counters["stats"]["unique_graphs"]
            samples, images = zip(*(self.timed_call() for _ in range(self.args.rounds)))
            graphs_during_timing = counters["stats"]["unique_graphs"] - graphs_before
            stats = self._stats(kind)
        finally:
            self._uncompile()
            self._disable(kind)
        row = {"name": name, "kind": kind or "none", "fullgraph": fullgraph, "report": report, "stats": stats,
               "latency_ms": {"median": statistics.median(samples), "samples": list(samples), "warmup": warm_ms},
               "compile_s_estimate": (warm_ms - statistics.median(samples)) / 1e3,
               "graphs_compiled_during_timing": graphs_during_timing,
               "deterministic": all(np.array_equal(first, im) for im in images)}
        if self.reference is None:
            self.reference = first
        row.update(image_metrics(first, self.reference))
        return row

    def _enable(self, kind, cfg):
        from fluxperf.steps.caching.cache_dit import COMPILE_HINT, apply_cache_dit
        from fluxperf.steps.caching.first_block import apply_first_block_cache

        kw = {"variant": "dev", "num_inference_steps": self.args.steps}
        if kind == "cache_dit":
            report = apply_cache_dit(self.pipe, cfg, **kw)
        elif kind == "first_block":
            report = apply_first_block_cache(self.pipe, cfg, **kw)
        else:
            return {"enabled": False}, COMPILE_HINT["fullgraph"]
        return report, report["compile"]["fullgraph"]

    def _stats(self, kind) -> dict:
        from fluxperf.steps.caching.cache_dit import cache_dit_stats
        from fluxperf.steps.caching.first_block import first_block_cache_stats

        if kind == "cache_dit":
            return cache_dit_stats(self.pipe)
        if kind == "first_block":
            return first_block_cache_stats(self.pipe)
        return {"cached_steps": 0, "executed_steps": self.args.steps, "total_steps": self.args.steps,
                "cached_step_indices": []}

    def _disable(self, kind) -> None:
        from fluxperf.steps.caching.cache_dit import disable_cache_dit
        from fluxperf.steps.caching.first_block import disable_first_block_cache

        if kind == "cache_dit":
            disable_cache_dit(self.pipe)
        elif kind == "first_block":
            disable_first_block_cache(self.pipe)

    def _uncompile(self) -> None:
        for module in self.pipe.transformer.modules():
            module._compiled_call_impl = None
        self.torch._dynamo.reset()


def clean_problems(rows: list[dict]) -> list[str]:
    """What makes a run not clean: skipped configurations, or a probe (threshold 1e-6) that cached a step or moved
    the image more than recompiling alone does.

    The probe must reach min(PROBE_MIN_DB, recompile floor - FLOOR_SLACK_DB), the floor being uncached_recompiled's
    PSNR against uncached (inf where the two compilations agree bit for bit).

    Example:
        >>> clean_problems([{"name": "uncached_recompiled", "psnr_db": 47.4},
        ...                 {"name": "cache_dit_probe", "psnr_db": 47.1, "stats": {"cached_steps": 0}}])
        []
    """
    problems = [f"{r['name']} skipped ({r['skipped']})" for r in rows if "skipped" in r]
    by_name = {r["name"]: r for r in rows if "skipped" not in r}
    probe = by_name.get("cache_dit_probe")
    if probe is None:
        return problems
    floor = by_name.get("uncached_recompiled", {}).get("psnr_db", float("inf"))
    required = min(PROBE_MIN_DB, floor - FLOOR_SLACK_DB)
    if probe["stats"]["cached_steps"] or probe["psnr_db"] < required:
        problems.append(f"cache_dit_probe cached {probe['stats']['cached_steps']} steps / PSNR {probe['psnr_db']:.1f} dB: "
                        f"threshold 1e-6 must cache nothing and reproduce the uncached image (>= {required:.1f} dB: "
                        f"min({PROBE_MIN_DB}, recompile floor {floor:.1f} - {FLOOR_SLACK_DB}))")
    return problems


def image_metrics(image: np.ndarray, reference: np.ndarray) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(image, reference):
        return {"psnr_db": float("inf"), "ssim": 1.0}
    return {"psnr_db": float(peak_signal_noise_ratio(reference, image, data_range=1.0)),
            "ssim": float(structural_similarity(reference, image, data_range=1.0, channel_axis=-1))}


def print_table(rows: list[dict], steps: int) -> None:
    base = next(r for r in rows if r["name"] == "uncached")["latency_ms"]["median"]
    print(f"\n{'configuration':<20} {'cached':>8} {'median ms':>10} {'speedup':>8} {'PSNR dB':>8} {'SSIM':>6}  notes")
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:<20} {'-':>8} {'-':>10} {'-':>8} {'-':>8} {'-':>6}  SKIPPED: {r['skipped']}")
            continue
        ms = r["latency_ms"]["median"]
        notes = [] if r["deterministic"] else ["NONDETERMINISTIC"]
        if r["graphs_compiled_during_timing"]:
            notes.append(f"recompiled x{r['graphs_compiled_during_timing']} while timed")
        print(f"{r['name']:<20} {r['stats']['cached_steps']:>4}/{steps:<3} {ms:>10.1f} {base / ms:>7.2f}x "
              f"{r['psnr_db']:>8.2f} {r['ssim']:>6.3f}  {' '.join(notes)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    import torch

    from fluxperf.measure.runner import prepared

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_cache: needs a CUDA GPU (run it on the H100), or --model tiny --device cpu.", file=sys.stderr)
        return 2
    with prepared("dev", args.model, None, device=args.device, dtype="bfloat16") as built:  # freed afterwards
        return run_all(args, Bench(args, built.pipe, built.build_s), t0)


def run_all(args, bench: Bench, t0: float) -> int:
    """Every configuration on `bench`'s pipeline (within the time budget), the JSON after each; exit status."""
    from fluxperf.env import gpu_info, versions

    print(f"[bench_cache] built {args.model} dev pipeline in {bench.build_s:.1f} s", flush=True)
    only = set(args.only.split(",")) if args.only else None
    rows, plan = [], configs()
    out = {"meta": {"gpu": gpu_info(), "versions": versions(), "size": args.size, "steps": args.steps,
                    "guidance": 3.5, "rounds": args.rounds, "dtype": "bfloat16", "compile": "regional",
                    "model": args.model, "device": args.device,
                    "build_s": bench.build_s}, "configs": rows}
    i = 0
    while i < len(plan):
        name, kind, cfg = plan[i]
        i += 1
        if only is not None and name != "uncached" and name not in only:
            continue
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            rows.append({"name": name, "skipped": f"time budget {args.budget_s:.0f} s spent ({elapsed:.0f} s)"})
            continue
        print(f"[bench_cache] {name} ({elapsed:.0f} s elapsed)", flush=True)
        rows.append(bench.run(name, kind, cfg))
        r = rows[-1]
        print(f"[bench_cache]   {r['latency_ms']['median']:.1f} ms, cached {r['stats']['cached_steps']}, "
              f"PSNR {r['psnr_db']:.2f} dB, compile ~{r['compile_s_estimate']:.0f} s", flush=True)
        if name == "cache_dit_probe":
            out["probe_residual_diffs"] = diffs = r["stats"]["residual_diffs"]
            if not args.no_calibrated:
                plan += calibrated_configs(diffs)
        atomic_write_json(args.out, out)  # after every configuration: a crash keeps what was measured
    out["total_s"] = time.perf_counter() - t0
    atomic_write_json(args.out, out)
    print_table(rows, args.steps)
    print(f"\n[bench_cache] wrote {args.out} in {out['total_s']:.0f} s")
    problems = clean_problems(rows)
    if problems:
        print(f"[bench_cache] NOT CLEAN: {problems}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
