"""`fluxperf history append|plot|changepoints|confirm`: the nightly history (logic in fluxperf.nightly)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

from fluxperf.cli._nightly_common import (
    EXIT_CORRUPT_HISTORY,
    EXIT_NOTHING_TO_JUDGE,
    changepoint_args,
    history_arg,
    iso_date,
    read_history,
)


def register(subparsers) -> None:
    """Add `fluxperf history ...`."""
    hist = subparsers.add_parser("history", help="nightly history: append records, plot trends, change points")
    verbs = hist.add_subparsers(dest="history_command", required=True)
    p = verbs.add_parser("append", help="append pytest-benchmark JSON records of one nightly")
    history_arg(p)
    p.add_argument("--records", nargs="+", required=True, help="pytest --benchmark-json file(s)")
    p.add_argument("--date", type=iso_date, default=dt.date.today().isoformat(), help="nightly date YYYY-MM-DD (default today)")
    p.add_argument("--run-id", default=os.environ.get("GITHUB_RUN_ID") or dt.datetime.now().strftime("%Y%m%dT%H%M%S"))
    p.add_argument("--attempt", type=int, default=1, help="1 = the nightly, 2+ = confirming re-runs")
    p.add_argument("--baseline", help="baselines/<gpu-slug>/ or its 0001_baseline.json (validated; for the verdicts)")
    p.set_defaults(func=cmd_history_append)
    p = verbs.add_parser("plot", help="per-benchmark trend PNGs across nightlies")
    history_arg(p)
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--benchmark", action="append", help="only this benchmark (repeatable)")
    p.set_defaults(func=cmd_history_plot)
    p = verbs.add_parser("changepoints", help="E-Divisive change points per benchmark")
    history_arg(p)
    changepoint_args(p)
    p.add_argument("--json", help="also write the change points here as JSON")
    p.set_defaults(func=cmd_history_changepoints)
    p = verbs.add_parser("confirm", help="exit 1 on a confirmed regression, 3 when a confirming re-run is needed, "
                                         f"{EXIT_NOTHING_TO_JUDGE} when the nightly has no records or a benchmark was never judged")
    history_arg(p)
    p.add_argument("--date", type=iso_date, default=dt.date.today().isoformat(), help="nightly date YYYY-MM-DD")
    p.add_argument("--names-out", help="write the confirmed and pending benchmarks here, one per line")
    p.set_defaults(func=cmd_history_confirm)


def cmd_history_append(args) -> int:
    from fluxperf.bench import EXIT_BASELINE_ERROR, EXIT_NOT_MEASURED
    from fluxperf.bench.baseline import BASELINE_NAME, load_baseline, load_run
    from fluxperf.errors import BaselineError
    from fluxperf.nightly.history import append_entries, baseline_id, entries_from_benchmark_json

    path = Path(args.baseline) if args.baseline else None
    if path is not None and path.is_dir():
        path = path / BASELINE_NAME
    try:
        docs = [load_run(p) for p in args.records]
        if path is not None and not path.exists():
            raise BaselineError(f"--baseline {args.baseline}: no baseline there ({path} does not exist), so the records "
                                "would get no verdict. Fix: pass baselines/<gpu-slug>/ of the GPU the records ran on, "
                                "or leave --baseline out to record them unjudged")
        slugs = {d["machine_info"]["fluxperf"]["slug"] for d in docs}
        if path is not None and len(slugs) != 1:
            raise BaselineError(f"records from several GPUs {sorted(slugs)}: append one GPU's records at a time")
        baseline = load_baseline(path, expected_slug=slugs.pop()) if path is not None else None
    except BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BASELINE_ERROR
    if not any(d["benchmarks"] for d in docs):
        print(f"error: {', '.join(args.records)}: no benchmark records (nothing was measured); nothing appended",
              file=sys.stderr)
        return EXIT_NOT_MEASURED
    entries = []
    for doc in docs:
        entries += entries_from_benchmark_json(doc, date=args.date, run_id=args.run_id, attempt=args.attempt,
                                               baseline=baseline, baseline_id=baseline_id(path) if path else None)
    count = append_entries(args.history, entries)
    flagged = [e["benchmark"] for e in entries if e["verdict"] == "regression"]
    print(f"appended {count} entries for nightly {args.date} (attempt {args.attempt}) to {args.history}; "
          f"regression vs baseline: {flagged or 'none'}")
    return 0


def cmd_history_plot(args) -> int:
    from fluxperf.nightly.changepoint import detect_changes
    from fluxperf.nightly.trends import plot_trends

    entries = read_history(args.history)
    if entries is None:
        return EXIT_CORRUPT_HISTORY
    if not entries:
        print(f"no history at {args.history}", file=sys.stderr)
        return 1
    paths = plot_trends(entries, args.out, names=args.benchmark,
                        changepoints=detect_changes(entries, names=args.benchmark))
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_history_changepoints(args) -> int:
    from fluxperf.nightly.changepoint import detect_changes

    entries = read_history(args.history)
    if entries is None:
        return EXIT_CORRUPT_HISTORY
    found = detect_changes(entries, alpha=args.alpha, min_rel_change=args.min_rel_change,
                           min_size=args.min_size)
    for name, cps in sorted(found.items()):
        for cp in cps:
            print(f"{name}: {cp.rel_change:+.1%} step began at {cp.label} (p={cp.p_value:.3g})")
    if args.json:
        from fluxperf.io import atomic_write_text as atomic_write

        atomic_write(args.json, json.dumps({k: [c.to_dict() for c in v] for k, v in found.items()}, indent=2))
    if not any(found.values()):
        print("no change points")
    return 0


def cmd_history_confirm(args) -> int:
    from fluxperf.io import atomic_write_text as atomic_write
    from fluxperf.nightly.confirm import confirm

    entries = read_history(args.history)
    if entries is None:
        return EXIT_CORRUPT_HISTORY
    if not any(e["date"] == args.date for e in entries):
        print(f"no records for nightly {args.date} in {args.history}: nothing to judge", file=sys.stderr)
        if args.names_out:
            atomic_write(args.names_out, "")
        return EXIT_NOTHING_TO_JUDGE
    result = confirm(entries, args.date)
    for s in result.statuses:
        print(f"{s.status:<9} {s.benchmark}: {s.why}")
    if args.names_out:
        names = [s.benchmark for s in result.statuses if s.status in ("confirmed", "pending")]
        atomic_write(args.names_out, "".join(f"{n}\n" for n in names))
    return result.exit_code
