"""`fluxperf baseline numerics`: derive baselines/<gpu-slug>/numerics.json or baselines/<family>/numerics.json.

    fluxperf baseline numerics MEASURED.json [MORE.json ...] --gpu "NVIDIA H200"      one GPU's thresholds
    fluxperf baseline numerics H100.json H200.json --family sm90                      an architecture family's

MEASURED.json is the tier's $OUT/numerics-measured.json (scripts/tiers/gpu-tier.sh). Several files: per rung the worst
value of all (lowest PSNR, largest relative error). PSNR minimum = measured - margin (dB); relative-error maximum =
measured x factor (floor 1e-3). The file is replaced atomically; git shows the change for review.
"""

from __future__ import annotations

import shlex
import sys
from datetime import date


def register_numerics(verbs, root_arg) -> None:
    p = verbs.add_parser("numerics", help="derive numerics.json thresholds from measured tier runs")
    p.add_argument("measured", nargs="+", help="numerics-measured.json file(s) written by scripts/tiers/gpu-tier.sh")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--gpu", type=_gpu_name, help="GPU name as torch reports it, e.g. 'NVIDIA H200' -> baselines/nvidia-h200/")
    who.add_argument("--family", help="architecture family, e.g. sm90 -> baselines/sm90/ (every Hopper GPU)")
    p.add_argument("--psnr-margin", type=_positive, default=3.0, help="dB below the measured PSNR (default 3)")
    p.add_argument("--factor", type=_at_least_one, default=1.5, help="x the measured relative error (default 1.5)")
    root_arg(p)
    p.set_defaults(func=cmd_numerics)


def _gpu_name(text: str) -> str:
    import argparse
    import re

    if not re.search(r"[A-Za-z0-9]", text):
        raise argparse.ArgumentTypeError(f"{text!r}: a GPU name needs letters or digits, e.g. 'NVIDIA H200'")
    return text


def _positive(text: str) -> float:
    import argparse
    import math

    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0 (dB), e.g. 3")
    return value


def _at_least_one(text: str) -> float:
    import argparse
    import math

    value = float(text)
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite factor >= 1, e.g. 1.5")
    return value


def cmd_numerics(args) -> int:
    import re
    from pathlib import Path

    from fluxperf.bench.baseline import default_root, read_json
    from fluxperf.env import git_commit, gpu_slug
    from fluxperf.errors import BaselineError
    from fluxperf.measure.thresholds import MEASURED_FIX, check_measured, derive, path_for, save, worst_of

    if args.family and not re.fullmatch(r"sm\d{2,3}", args.family):
        print(f"error: --family {args.family!r}: must be sm<major><minor>, e.g. sm90", file=sys.stderr)
        return 2
    try:
        measured = [check_measured(read_json(m, "measured file", MEASURED_FIX), Path(m).name) for m in args.measured]
        provenance = {"from": args.measured, "date": date.today().isoformat(), "git_commit": git_commit(),
                      "command": "fluxperf baseline numerics " + " ".join(shlex.quote(a) for a in sys.argv[3:])}
        t = derive(worst_of(measured), psnr_margin_db=args.psnr_margin, rel_err_factor=args.factor, gpu=args.gpu,
                   family=args.family, provenance=provenance)
        path = save(t, path_for(args.root or default_root(), args.family or gpu_slug(args.gpu)))
    except BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 12
    print(f"wrote {path}")
    return 0
