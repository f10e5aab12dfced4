"""Derive baselines/<gpu>/numerics.json from a tier run's numerics-measured.json.

    python scripts/derive_thresholds.py MEASURED.json --gpu "NVIDIA H100 80GB HBM3" [--psnr-margin 3] [--factor 1.5]

PSNR thresholds are the measured PSNR minus the margin (dB); relative-error thresholds the measured error times the
factor (floor 1e-3). The previous file is replaced atomically; git shows the change for review.
"""

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from fluxperf.env import git_commit, gpu_slug
from fluxperf.thresholds import derive, path_for, save


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("measured")
    p.add_argument("--gpu", required=True, help="GPU name as torch reports it")
    p.add_argument("--psnr-margin", type=float, default=3.0)
    p.add_argument("--factor", type=float, default=1.5)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "baselines"))
    args = p.parse_args(argv)
    measured = json.loads(Path(args.measured).read_text())
    provenance = {"from": args.measured, "date": date.today().isoformat(), "git_commit": git_commit(),
                  "command": " ".join(sys.argv)}
    t = derive(measured, psnr_margin_db=args.psnr_margin, rel_err_factor=args.factor, gpu=args.gpu,
               provenance=provenance)
    path = save(t, path_for(args.root, gpu_slug(args.gpu)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
