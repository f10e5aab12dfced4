"""`fluxperf ladder`: run the ablation ladder on the synthetic pipeline (or a real checkpoint).

Every option is checked by its argparse type (the rules of `fluxperf.measure.ladder_run.LadderOptions`' fields, see
fluxperf.cli._types) and the output directory is proven writable before any model is built: a bad value exits 2
with one line naming the option, the value, the rule and the fix.
"""

from __future__ import annotations

import shlex
import sys


def register(subparsers) -> None:
    from fluxperf.cli._types import comma_list, option_type
    from fluxperf.ladder import rung_names
    from fluxperf.measure.ladder_run import LadderOptions, device_problem
    from fluxperf.model.configs import SIZES, VARIANTS

    def opt(name, parse=str, **kw):
        return option_type(LadderOptions, name, parse, **kw)

    p = subparsers.add_parser("ladder", help="run the ablation ladder, time each rung, compare images",
                              description="Run the ablation ladder: tiny model on CPU, full size on CUDA by default.")
    p.add_argument("--variant", choices=VARIANTS, default="schnell")
    p.add_argument("--size", choices=SIZES, help="synthetic model size (default: full on CUDA, tiny on CPU)")
    p.add_argument("--device", type=opt("device", extra=device_problem),
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--height", type=opt("height", int), help="image height in pixels, a multiple of 16 "
                                                               "(default 1024 full, 64 tiny)")
    p.add_argument("--width", type=opt("width", int), help="image width in pixels, a multiple of 16")
    p.add_argument("--steps", type=opt("steps", int), help="denoising steps (default: schnell 4, dev/kontext 28)")
    p.add_argument("--rungs", type=opt("rungs", comma_list),
                   help=f"comma-separated rungs; known: {','.join(rung_names())}")
    p.add_argument("--reference", type=opt("reference"), help="rung the PSNR is measured against (default bf16)")
    p.add_argument("--seed", type=opt("seed", int), default=0)
    p.add_argument("--batch", type=opt("batch", int), default=1)
    p.add_argument("--warmup", type=opt("warmup", int), default=1, help="untimed pipeline calls per rung")
    p.add_argument("--runs", "--rounds", dest="rounds", type=opt("rounds", int), default=3,
                   help="timed runs of the whole pipeline per rung (default 3): their average, min, p50, p90, p99; "
                        "a percentile p needs ceil(100/(100-p)) runs (p50: 2, p90: 10, p99: 100), else n/a")
    p.add_argument("--step-rounds", type=opt("step_rounds", int), default=5, help="timed transformer steps per rung")
    p.add_argument("--checkpoint", type=opt("checkpoint"),
                   help="local path or hub id of a real FLUX.1 pipeline (default: synthetic)")
    p.add_argument("--trace-file", type=opt("trace_file"), metavar="TRACE.json[.gz]",
                   help="write a PyTorch profiler Chrome trace of one call per rung, after the timed runs, with "
                        "regions prompt_encoding, denoising_step, decoding, postprocessing, pil_conversion, to "
                        "TRACE.<rung>.json[.gz] (relative to the current directory)")
    p.add_argument("--out", default="fluxperf-out/ladder",
                   help="output directory (CSV, JSON, PNGs); created, and checked writable before any rung runs")
    p.set_defaults(func=run)


def run(args) -> int:
    from fluxperf.measure.ladder_report import check_out_dir, markdown, table, write_outputs
    from fluxperf.measure.ladder_run import LadderOptions, OptionError, run_ladder
    from fluxperf.measure.trace import check_trace_path

    try:
        opts = LadderOptions(variant=args.variant, size=args.size, device=args.device, height=args.height,
                             width=args.width, steps=args.steps, rungs=args.rungs, reference=args.reference,
                             seed=args.seed, batch=args.batch, warmup=args.warmup, rounds=args.rounds,
                             step_rounds=args.step_rounds, checkpoint=args.checkpoint, trace_file=args.trace_file)
        check_out_dir(args.out, option="--out")
        if args.trace_file:
            check_trace_path(args.trace_file, option="--trace-file", error=OptionError)
    except OptionError as exc:  # what argparse cannot see alone (the output directory)
        print(f"fluxperf ladder: error: {exc}", file=sys.stderr)
        return 2
    result = run_ladder(opts, progress=lambda m: print(m, file=sys.stderr, flush=True))
    command = "fluxperf " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_outputs(result, args.out, command=command)
    print(markdown(table(result)))
    print(f"\nwrote {paths['csv'].parent}/ (ladder.csv, ladder.json, ladder.md, ladder.png, <rung>.png)")
    traces = [r.trace_file for r in result.rungs if r.trace_file]
    if traces:
        print(f"wrote traces: {', '.join(traces)}")
    if not result.ok:
        failed = [r.rung for r in result.rungs if r.status != "ok"]
        print(f"FAILED rungs: {', '.join(failed)} (errors in ladder.json)", file=sys.stderr)
        return 1
    return 0
