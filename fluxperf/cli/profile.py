"""`fluxperf profile`: where one transformer step's time goes (kernel table -> per-category budget).

Two sources: a stored kernel table (`--table`, e.g. the one kept with a baseline; no GPU needed) or a live profile
of one rung (`--rung`: build the synthetic pipeline, apply the rung, time and profile one step).
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    from fluxperf.cli._types import option_type, value_type
    from fluxperf.ladder import rung_names
    from fluxperf.measure.ladder_run import LadderOptions, device_problem
    from fluxperf.model.configs import SIZES, VARIANTS

    positive = {"accepted": (float,), "lo": 0, "open_lo": True}
    p = subparsers.add_parser("profile", help="per-category time budget of one transformer step",
                              description="Profile one transformer step (or read a stored kernel table) and split its "
                                          "time into GEMM, attention, quantization, fused/eager elementwise, copies "
                                          "and launch gaps, with achieved TFLOP/s.")
    src = p.add_mutually_exclusive_group(required=True)
    # a missing table is reported by load_kernel_table in run() (exit 2, before any work)
    src.add_argument("--table", type=value_type(str, (str,), nonempty=True),
                     help="a kernel table CSV (name,count,cuda_time_us per step), e.g. baselines/<gpu>/kernels/*.csv")
    src.add_argument("--rung", type=value_type(str, (str,), choices=rung_names()),
                     help="profile this ladder rung live (e.g. float8)")
    p.add_argument("--variant", choices=VARIANTS, default="schnell")
    p.add_argument("--size", choices=SIZES, help="synthetic model size (default: full on CUDA, tiny on CPU)")
    p.add_argument("--device", type=option_type(LadderOptions, "device", extra=device_problem),
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--height", type=option_type(LadderOptions, "height", int),
                   help="a multiple of 16; default 1024 full, 64 tiny")
    p.add_argument("--width", type=option_type(LadderOptions, "width", int), help="a multiple of 16")
    p.add_argument("--step-ms", type=value_type(float, **positive),
                   help="with --table: the measured step time (adds the launch-gaps row)")
    p.add_argument("--gemm-tflops", type=value_type(float, **positive),
                   help="a GEMM rate (e.g. the measured bf16 peak) for the 'ms at rate' column")
    p.add_argument("--attention-tflops", type=value_type(float, **positive),
                   help="an attention rate for the 'ms at rate' column")
    p.add_argument("--rounds", type=option_type(LadderOptions, "rounds", int), default=10,
                   help="with --rung: timed steps for the step median")
    p.add_argument("--out", help="directory for kernels.csv, budget.csv, budget.md (written atomically; checked "
                                 "writable before profiling)")
    p.set_defaults(func=run)


def run(args) -> int:
    from fluxperf.bench.budget import time_budget, to_markdown
    from fluxperf.bench.flops import step_flops
    from fluxperf.bench.kernels import load_kernel_table
    from fluxperf.errors import FluxperfError

    out = None
    try:
        if args.out:  # before minutes of profiling, not after; the checked (~-expanded) path is the one written
            from fluxperf.measure.ladder_report import check_out_dir

            out = check_out_dir(args.out, option="--out")
        if args.table:
            size = args.size or "full"
            spec = _spec(args, size)
            table, step_ms = load_kernel_table(args.table), args.step_ms
        else:
            table, step_ms, size, spec = _profile_rung(args)
        budget = time_budget(table, flops=step_flops(spec, size=size), step_ms=step_ms,
                             gemm_tflops=args.gemm_tflops, attention_tflops=args.attention_tflops)
    except (FluxperfError, FileNotFoundError, ValueError) as exc:
        print(f"fluxperf profile: {exc}", file=sys.stderr)
        return 2
    text = to_markdown(budget)
    print(f"{spec.key()} ({size}), {'table ' + args.table if args.table else 'rung ' + args.rung}\n\n{text}")
    if out is not None:
        _write(out, table, budget, text)
        print(f"wrote {out}/ (kernels.csv, budget.csv, budget.md)")
    return 0


def _spec(args, size: str):
    from fluxperf.model.shapes import ShapeSpec

    side = 1024 if size == "full" else 64
    return ShapeSpec(args.variant, args.height or side, args.width or args.height or side)


def _profile_rung(args):
    """Build, apply, time and profile one step of the rung (fluxperf.measure.runner.prepared: freed afterwards);
    returns (table, step median ms, size, spec)."""
    import torch

    from fluxperf.ladder import recipe_from
    from fluxperf.measure.runner import prepared
    from fluxperf.model.configs import VARIANT_DEFAULTS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or ("full" if device.startswith("cuda") else "tiny")
    spec = _spec(args, size)
    with prepared(args.variant, size, recipe_from(args.rung), device=device, spec=spec,
                  steps=VARIANT_DEFAULTS[args.variant]["steps"]) as run:
        table, step_ms = _profile_step(run.pipe, spec, device, args.rounds)
    return table, step_ms, size, spec


def _profile_step(pipe, spec, device: str, rounds: int):
    """(kernel table of one transformer step, its median ms on CUDA / None on CPU)."""
    import torch

    from fluxperf.bench.kernels import profile_kernel_table
    from fluxperf.bench.timing import time_fn
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs

    inputs = transformer_inputs(spec, dims_of_pipeline(pipe), device=device, dtype=pipe.transformer.dtype)

    def step():
        with torch.inference_mode():
            return pipe.transformer(**inputs)

    timing = time_fn(step, warmup=3, rounds=rounds, device=device)  # warm-up compiles
    table = profile_kernel_table(step, warmup=1, iters=3, device="cuda" if device.startswith("cuda") else "cpu")
    # CPU profiles time ops on the host thread, which also covers what a GPU would call launch gaps: no gaps row
    return table, (timing.median_ms if device.startswith("cuda") else None)


def _write(out: Path, table, budget, text: str) -> None:
    from fluxperf.io import atomic_write_text

    atomic_write_text(out / "kernels.csv", table.to_csv(index=False))
    atomic_write_text(out / "budget.csv", budget.to_csv(index=False))
    atomic_write_text(out / "budget.md", text)

