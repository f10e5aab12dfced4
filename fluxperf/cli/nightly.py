"""`fluxperf nightly install|summary`: the nightly GPU CI helpers (logic in fluxperf.nightly)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from fluxperf.cli._nightly_common import (
    EXIT_CORRUPT_HISTORY,
    EXIT_INSTALL_IMPOSSIBLE,
    changepoint_args,
    history_arg,
    iso_date,
    read_history,
    tier_status,
)


def register(subparsers) -> None:
    """Add `fluxperf nightly ...`."""
    night = subparsers.add_parser("nightly", help="nightly CI helpers: install the torch nightly, write the summary")
    verbs = night.add_subparsers(dest="nightly_command", required=True)
    p = verbs.add_parser("install", help=f"install torch (+torchao) nightly; exit {EXIT_INSTALL_IMPOSSIBLE} "
                                         "when the index cannot be reached")
    p.add_argument("--index-url", help="nightly wheel index (default $FLUXPERF_TORCH_INDEX or the cu130 nightlies)")
    p.add_argument("--torch-version", help="exact nightly version (default: the newest on the index)")
    p.add_argument("--no-torchao", action="store_true")
    p.add_argument("--check", action="store_true", help="only probe the index")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds for the reachability probe")
    p.set_defaults(func=cmd_nightly_install)
    p = verbs.add_parser("summary", help="markdown summary of one nightly")
    history_arg(p)
    changepoint_args(p)
    p.add_argument("--date", type=iso_date, default=dt.date.today().isoformat(), help="nightly date YYYY-MM-DD")
    p.add_argument("--tier", action="append", type=tier_status, default=[], metavar="NAME=RC",
                   help="tier exit status (repeatable; RC empty or '-' = not run)")
    p.add_argument("--explain-dir", help="directory of kernel-diff .md files to include")
    p.add_argument("--plots-dir", help="directory of trend PNGs to list")
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--out", required=True, help="markdown file to write")
    p.set_defaults(func=cmd_nightly_summary)


def cmd_nightly_install(args) -> int:
    from fluxperf.nightly.install import InstallError, PipInstaller, index_url, list_versions, probe_index

    url = index_url(args.index_url)
    ok, why = probe_index(url, timeout=args.timeout)
    if not ok:
        print(f"nightly install impossible: {why}", file=sys.stderr)
        return EXIT_INSTALL_IMPOSSIBLE
    print(f"nightly index reachable: {why}")
    if args.check:
        return 0
    try:
        version = args.torch_version or list_versions(url)[-1]
        PipInstaller(url, with_torchao=not args.no_torchao)(version)
    except (InstallError, IndexError) as exc:
        print(f"nightly install failed: {exc or 'no torch wheel for this Python on the index'}", file=sys.stderr)
        return 1
    print(f"installed torch {version} from {url}")
    return 0


def cmd_nightly_summary(args) -> int:
    from fluxperf.io import atomic_write_text as atomic_write
    from fluxperf.nightly.changepoint import detect_changes
    from fluxperf.nightly.confirm import confirm
    from fluxperf.nightly.report import nightly_summary

    entries = read_history(args.history)
    if entries is None:  # still write a summary: the nightly must say why it has no verdicts
        atomic_write(args.out, f"# fluxperf nightly {args.date}\n\n- **history {args.history} is corrupt**: see "
                               "the nightly log; nothing could be judged\n" + "".join(f"- note: {n}\n" for n in args.note))
        print(f"wrote {args.out}")
        return EXIT_CORRUPT_HISTORY
    tonight = any(e["date"] == args.date for e in entries)
    explanations = {p.stem: p.read_text() for p in sorted(Path(args.explain_dir).glob("*.md"))} \
        if args.explain_dir and Path(args.explain_dir).is_dir() else {}
    plots = sorted(Path(args.plots_dir).glob("*.png")) if args.plots_dir and Path(args.plots_dir).is_dir() else []
    md = nightly_summary(entries, args.date, tiers=dict(args.tier),
                         confirmation=confirm(entries, args.date) if tonight else None,
                         changepoints=detect_changes(entries, alpha=args.alpha, min_rel_change=args.min_rel_change,
                                                     min_size=args.min_size) if entries else {},
                         explanations=explanations, plots=plots, notes=args.note)
    atomic_write(args.out, md)
    print(f"wrote {args.out}")
    return 0
