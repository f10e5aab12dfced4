"""`fluxperf ladder`: run the ablation ladder on the synthetic pipeline (or a real checkpoint).

Every option is checked by its argparse type (the rules of `fluxperf.measure.ladder_run.LadderOptions`' fields, see
fluxperf.cli._types; --checkpoint by fluxperf.model.build.checkpoint_problem; a rung given twice refused); then,
before any model is built, every rung's packages and hardware (fluxperf.requirements.missing, as `fluxperf generate`
checks its recipe) and the output paths (--out and each rung's --trace-file name proven writable; `~` expanded, and
the checked path is the one written): a bad value exits 2 with one line naming the option, the value, the rule and
the fix. The reference rung (PSNR/SSIM and speed-up) is said in the progress and under the table.
"""

from __future__ import annotations

import shlex
import sys


def register(subparsers) -> None:
    from fluxperf.cli._types import checkpoint_type, comma_list, option_type
    from fluxperf.ladder import rung_names
    from fluxperf.measure.ladder_run import LadderOptions, device_problem, duplicate_rungs_problem
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
    p.add_argument("--rungs", type=opt("rungs", comma_list, extra=duplicate_rungs_problem),
                   help=f"comma-separated rungs; known: {','.join(rung_names())}")
    p.add_argument("--reference", type=opt("reference"), help="rung the PSNR is measured against (default bf16)")
    p.add_argument("--seed", type=opt("seed", int), default=0)
    p.add_argument("--batch", type=opt("batch", int), default=1)
    p.add_argument("--warmup", type=opt("warmup", int), default=1, help="untimed pipeline calls per rung")
    p.add_argument("--runs", "--rounds", dest="rounds", type=opt("rounds", int), default=3,
                   help="timed runs of the whole pipeline per rung (default 3): their average, min, p50, p90, p99; "
                        "a percentile p needs ceil(100/(100-p)) runs (p50: 2, p90: 10, p99: 100), else n/a")
    p.add_argument("--step-rounds", type=opt("step_rounds", int), default=5, help="timed transformer steps per rung")
    p.add_argument("--checkpoint", type=checkpoint_type(LadderOptions),
                   help="local path or hub id of a real FLUX.1 pipeline (default: synthetic)")
    p.add_argument("--trace-file", type=opt("trace_file"), metavar="TRACE.json[.gz]",
                   help="write a PyTorch profiler Chrome trace of one call per rung, after the timed runs, with "
                        "regions prompt_encoding, denoising_step, decoding, postprocessing, pil_conversion, to "
                        "TRACE.<rung>.json[.gz] (relative to the current directory)")
    p.add_argument("--out", default="fluxperf-out/ladder",
                   help="output directory (CSV, JSON, PNGs); created, and checked writable before any rung runs")
    p.set_defaults(func=run)


def run(args) -> int:
    from fluxperf.measure.ladder_report import markdown, table, write_outputs
    from fluxperf.measure.ladder_run import run_ladder

    say = _progress
    try:
        opts, out = _checked(args)
    except _Refused as exc:  # what argparse cannot see alone (the rungs' needs here, the output paths)
        print(f"fluxperf ladder: error: {exc}", file=sys.stderr)
        return 2
    say(_reference_line(opts, args))
    result = run_ladder(opts, progress=say)
    command = "fluxperf " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_outputs(result, out, command=command)
    print(markdown(table(result), reference=result.options.reference))
    print(f"\nwrote {paths['csv'].parent}/ (ladder.csv, ladder.json, ladder.md, ladder.png, <rung>.png)")
    traces = [r.trace_file for r in result.rungs if r.trace_file]
    if traces:
        print(f"wrote traces: {', '.join(traces)}")
    if not result.ok:
        failed = [r.rung for r in result.rungs if r.status != "ok"]
        print(f"FAILED rungs: {', '.join(failed)} (errors in ladder.json)", file=sys.stderr)
        return 1
    return 0


class _Refused(Exception):
    pass


def _checked(args):
    """(LadderOptions, output directory) with every path the one checked (user-expanded) and every rung runnable
    here; nothing is built. Raises _Refused (one line)."""
    import dataclasses

    from fluxperf.measure.ladder_report import check_out_dir
    from fluxperf.measure.ladder_run import LadderOptions, OptionError
    from fluxperf.measure.trace import check_trace_path

    try:
        opts = LadderOptions(variant=args.variant, size=args.size, device=args.device, height=args.height,
                             width=args.width, steps=args.steps, rungs=args.rungs, reference=args.reference,
                             seed=args.seed, batch=args.batch, warmup=args.warmup, rounds=args.rounds,
                             step_rounds=args.step_rounds, checkpoint=args.checkpoint, trace_file=args.trace_file)
        resolved = opts.resolved()
        _check_rungs_run_here(resolved)
        out = check_out_dir(args.out, option="--out")
        if args.trace_file:  # each rung's trace name (TRACE.<rung>.json) is checked too: the tag lengthens it
            trace = check_trace_path(args.trace_file, option="--trace-file", error=OptionError, tags=resolved.rungs)
            opts = dataclasses.replace(opts, trace_file=str(trace))
    except OptionError as exc:
        raise _Refused(str(exc)) from None
    return opts, out


def _check_rungs_run_here(opts) -> None:
    """Refuse, before anything is built, the rungs whose packages or hardware this machine lacks
    (fluxperf.requirements.missing, as `fluxperf generate` does): a ladder of them would build the model for each
    only to record the refusal apply() is known to give.

    A context-parallel rung on a CPU runs its ranks on gloo (fluxperf.parallel_launch makes the process group), so
    there its own needs are those of one rank."""
    from fluxperf.ladder import recipe_from
    from fluxperf.measure.ladder_run import OptionError
    from fluxperf.requirements import missing

    refused = {}
    for name in opts.rungs:
        recipe = recipe_from(name)
        if recipe.parallel.enabled and opts.device == "cpu":
            recipe = recipe.replace(parallel={"enabled": False})
        lines = missing(recipe, opts.device)
        if lines:
            refused[name] = lines
    if refused:
        keep = [n for n in opts.rungs if n not in refused]
        what = " | ".join(f"{name}: {'; '.join(lines)}" for name, lines in refused.items())
        names = ("rung " if len(refused) == 1 else "rungs ") + ", ".join(map(repr, refused))
        fix = f"--rungs {','.join(keep)}" if keep else "other rungs"
        raise OptionError(f"{names} cannot run on {opts.device} here: {what} | Fix: drop them ({fix}), or run on a "
                          "machine that has what they need.")


def _reference_line(opts, args) -> str:
    """Which rung the PSNR/SSIM and the speed-up are measured against, and why that one."""
    resolved = opts.resolved()
    ref = resolved.reference
    if args.reference is None and ref != "bf16":
        why = "the first rung: the default reference bf16 is not among the rungs; set one with --reference"
    elif opts.rungs is not None and ref not in opts.rungs:
        why = "not in --rungs: it runs first as an extra rung"
    else:
        why = "--reference" if args.reference else "the default"
    return f"[ladder] reference rung (PSNR, SSIM, speed-up against it): {ref} ({why})"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
