"""`fluxperf ladder`: run the ablation ladder on the synthetic pipeline (or a real checkpoint)."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers) -> None:
    from ..ladder import rung_names

    p = subparsers.add_parser("ladder", help="run the ablation ladder, time each rung, compare images",
                              description="Run the ablation ladder: tiny model on CPU, full size on CUDA by default.")
    p.add_argument("--variant", choices=("schnell", "dev", "kontext"), default="schnell")
    p.add_argument("--size", choices=("tiny", "full"), help="synthetic model size (default: full on CUDA, tiny on CPU)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--height", type=int, help="image height in pixels (default 1024 full, 64 tiny)")
    p.add_argument("--width", type=int, help="image width in pixels")
    p.add_argument("--steps", type=int, help="denoising steps (default: schnell 4, dev/kontext 28)")
    p.add_argument("--rungs", type=_rung_list, help=f"comma-separated rungs; known: {','.join(rung_names())}")
    p.add_argument("--reference", help="rung the PSNR is measured against (default bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="untimed pipeline calls per rung")
    p.add_argument("--rounds", type=int, default=3, help="timed pipeline calls per rung")
    p.add_argument("--step-rounds", type=int, default=5, help="timed transformer steps per rung")
    p.add_argument("--checkpoint", help="local path or hub id of a real FLUX.1 pipeline (default: synthetic)")
    p.add_argument("--out", default="fluxperf-out/ladder", help="output directory (CSV, JSON, PNGs)")
    p.set_defaults(func=run)


def _rung_list(text: str) -> tuple[str, ...]:
    from ..ladder import rung_names

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in rung_names()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown rung(s) {unknown or text!r}; known: {', '.join(rung_names())}")
    return names


def run(args) -> int:
    from ..ladder_report import markdown, table, write_outputs
    from ..ladder_run import LadderOptions, run_ladder

    opts = LadderOptions(variant=args.variant, size=args.size, device=args.device, height=args.height,
                         width=args.width, steps=args.steps, rungs=args.rungs, reference=args.reference,
                         seed=args.seed, batch=args.batch, warmup=args.warmup, rounds=args.rounds,
                         step_rounds=args.step_rounds, checkpoint=args.checkpoint)
    result = run_ladder(opts, progress=lambda m: print(m, file=sys.stderr, flush=True))
    command = "fluxperf " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_outputs(result, args.out, command=command)
    print(markdown(table(result)))
    print(f"\nwrote {paths['csv'].parent}/ (ladder.csv, ladder.json, ladder.md, ladder.png, <rung>.png)")
    if not result.ok:
        failed = [r.rung for r in result.rungs if r.status != "ok"]
        print(f"FAILED rungs: {', '.join(failed)} (errors in ladder.json)", file=sys.stderr)
        return 1
    return 0
