"""`fluxperf history ...`, `fluxperf explain`, `fluxperf bisect`, `fluxperf nightly ...`: the nightly GPU CI verbs.

Only argument parsing and printing live here; the logic is in fluxperf.nightly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import sys
from pathlib import Path

DEFAULT_HISTORY = "runs/nightly/history.jsonl"
EXIT_INSTALL_IMPOSSIBLE = 2
EXIT_NOTHING_TO_JUDGE = 4
EXIT_CORRUPT_HISTORY = 12  # the history is a stored record like a baseline: same status as a corrupt baseline


def register(subparsers) -> None:
    """Add the history/explain/bisect/nightly subcommands to the `fluxperf` parser."""
    _register_history(subparsers)
    _register_explain(subparsers)
    _register_bisect(subparsers)
    _register_nightly(subparsers)


def _history_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", default=os.environ.get("FLUXPERF_HISTORY", DEFAULT_HISTORY),
                   help=f"JSONL history file (default $FLUXPERF_HISTORY or {DEFAULT_HISTORY})")


def _register_history(subparsers) -> None:
    hist = subparsers.add_parser("history", help="nightly history: append records, plot trends, change points")
    verbs = hist.add_subparsers(dest="history_command", required=True)
    p = verbs.add_parser("append", help="append pytest-benchmark JSON records of one nightly")
    _history_arg(p)
    p.add_argument("--records", nargs="+", required=True, help="pytest --benchmark-json file(s)")
    p.add_argument("--date", type=_date, default=dt.date.today().isoformat(), help="nightly date YYYY-MM-DD (default today)")
    p.add_argument("--run-id", default=os.environ.get("GITHUB_RUN_ID") or dt.datetime.now().strftime("%Y%m%dT%H%M%S"))
    p.add_argument("--attempt", type=int, default=1, help="1 = the nightly, 2+ = confirming re-runs")
    p.add_argument("--baseline", help="baselines/<gpu-slug>/ or its 0001_baseline.json (validated; for the verdicts)")
    p.set_defaults(func=cmd_history_append)
    p = verbs.add_parser("plot", help="per-benchmark trend PNGs across nightlies")
    _history_arg(p)
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--benchmark", action="append", help="only this benchmark (repeatable)")
    p.set_defaults(func=cmd_history_plot)
    p = verbs.add_parser("changepoints", help="E-Divisive change points per benchmark")
    _history_arg(p)
    _changepoint_args(p)
    p.add_argument("--json", help="also write the change points here as JSON")
    p.set_defaults(func=cmd_history_changepoints)
    p = verbs.add_parser("confirm", help="exit 1 on a confirmed regression, 3 when a confirming re-run is needed, "
                                         f"{EXIT_NOTHING_TO_JUDGE} when the nightly has no records or a benchmark was never judged")
    _history_arg(p)
    p.add_argument("--date", type=_date, default=dt.date.today().isoformat(), help="nightly date YYYY-MM-DD")
    p.add_argument("--names-out", help="write the confirmed and pending benchmarks here, one per line")
    p.set_defaults(func=cmd_history_confirm)


def _changepoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.01, help="permutation-test significance (default 0.01)")
    p.add_argument("--min-rel-change", type=float, default=0.02, help="smallest step reported (default 0.02)")
    p.add_argument("--min-size", type=int, default=3, help="fewest nightlies on each side of a step")


def _register_explain(subparsers) -> None:
    p = subparsers.add_parser("explain", help="per-kernel diff of a benchmark against its baseline kernel table")
    p.add_argument("--benchmark", required=True, help="benchmark name (its full node id)")
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--baseline-table", help="baseline kernel table CSV")
    base.add_argument("--baseline-dir", help="baselines/<gpu-slug>/ (or its kernels/): the tables its baseline names")
    cur = p.add_mutually_exclusive_group(required=True)
    cur.add_argument("--current-table", help="current kernel table CSV")
    cur.add_argument("--current-dir", help="directory of current kernel tables named by kernel_table_path")
    cur.add_argument("--current-json", nargs="+", help="pytest-benchmark JSON file(s) run with "
                                                        "--fluxperf-kernel-tables (the table is in extra_info)")
    cur.add_argument("--target", help="module:factory returning a zero-argument callable to profile now")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", help="directory to save <benchmark>.md and <benchmark>.csv")
    p.set_defaults(func=cmd_explain)


def _register_bisect(subparsers) -> None:
    p = subparsers.add_parser("bisect", help="binary-search nightlies for the first bad one (needs network)")
    p.add_argument("--good", required=True, help="good nightly: date YYYY-MM-DD or version x.y.z.devYYYYMMDD")
    p.add_argument("--bad", required=True, help="bad nightly: date or version")
    p.add_argument("--test", required=True, help="one pytest node id (a benchmark or a test)")
    p.add_argument("--index-url", help="nightly wheel index (default $FLUXPERF_TORCH_INDEX or the cu130 nightlies)")
    p.add_argument("--versions", help="comma-separated nightly versions to search instead of listing the index")
    p.add_argument("--no-torchao", action="store_true", help="do not install the same-day torchao nightly")
    p.add_argument("--rel-threshold", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--dry-run", action="store_true", help="print the nightlies and the run bound, run nothing")
    p.set_defaults(func=cmd_bisect)


def _register_nightly(subparsers) -> None:
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
    _history_arg(p)
    _changepoint_args(p)
    p.add_argument("--date", type=_date, default=dt.date.today().isoformat(), help="nightly date YYYY-MM-DD")
    p.add_argument("--tier", action="append", type=_tier, default=[], metavar="NAME=RC",
                   help="tier exit status (repeatable; RC empty or '-' = not run)")
    p.add_argument("--explain-dir", help="directory of kernel-diff .md files to include")
    p.add_argument("--plots-dir", help="directory of trend PNGs to list")
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--out", required=True, help="markdown file to write")
    p.set_defaults(func=cmd_nightly_summary)


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


def _history(path: str) -> list[dict] | None:
    """The history's entries; None (after printing the named error) when a line is corrupt."""
    from fluxperf.nightly.history import load_history

    try:
        return load_history(path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_history_plot(args) -> int:
    from fluxperf.nightly.changepoint import detect_changes
    from fluxperf.nightly.trends import plot_trends

    entries = _history(args.history)
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

    entries = _history(args.history)
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

    entries = _history(args.history)
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


def cmd_explain(args) -> int:
    from fluxperf.bench.baseline import kernel_table_file
    from fluxperf.bench.kernels import (
        compare_kernel_tables,
        kernel_table_path,
        load_kernel_table,
        profile_kernel_table,
        to_markdown,
        totals,
    )
    from fluxperf.io import atomic_write_text as atomic_write

    base = load_kernel_table(args.baseline_table or kernel_table_file(args.baseline_dir, args.benchmark))
    if args.target:
        current = profile_kernel_table(_load_target(args.target)())
    elif args.current_json:
        current = _table_from_json(args.current_json, args.benchmark)
    else:
        current = load_kernel_table(args.current_table or kernel_table_path(args.current_dir, args.benchmark))
    diff = compare_kernel_tables(base, current, top=args.top)
    t = totals(base, current)
    md = (f"Total CUDA time per iteration: {t['baseline_us']:.1f} → {t['current_us']:.1f} µs "
          f"({t['ratio'] - 1:+.1%})\n\n" + to_markdown(diff))
    print(md)
    if args.out:
        stem = kernel_table_path(args.out, args.benchmark)
        atomic_write(stem.with_suffix(".md"), f"### `{args.benchmark}`\n\n{md}")
        atomic_write(stem.with_suffix(".csv"), diff.to_csv(index=False))
    return 0


def _table_from_json(paths: list[str], benchmark: str):
    from fluxperf.bench.kernels import table_from_records
    from fluxperf.nightly.history import benchmark_key

    for path in paths:
        for bench in json.loads(Path(path).read_text()).get("benchmarks") or []:
            if benchmark_key(bench) == benchmark:
                records = (bench.get("extra_info") or {}).get("kernel_table")
                if not records:
                    raise SystemExit(f"{path}: benchmark {benchmark!r} has no extra_info.kernel_table; re-run it "
                                     "with --fluxperf-kernel-tables.")
                return table_from_records(records)
    raise SystemExit(f"no benchmark {benchmark!r} in {paths}.")


def _load_target(spec: str):
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise SystemExit(f"--target {spec!r} must be 'module:factory' (a function returning a callable).")
    return getattr(importlib.import_module(module), attr)


def cmd_bisect(args) -> int:
    import math

    from fluxperf.nightly.bisect import PytestMeasure, bisect_versions
    from fluxperf.nightly.install import PipInstaller, index_url, list_versions, select_range

    url = index_url(args.index_url)
    listed = args.versions.split(",") if args.versions else list_versions(url)
    versions = select_range(listed, args.good, args.bad)
    print(f"{len(versions)} nightlies from {versions[0]} to {versions[-1]}; at most "
          f"{math.ceil(math.log2(len(versions))) + 1} runs")
    if args.dry_run:
        print("\n".join(versions))
        return 0
    result = bisect_versions(versions, install=PipInstaller(url, with_torchao=not args.no_torchao),
                             measure=PytestMeasure(args.test), log=print,
                             rel_threshold=args.rel_threshold, alpha=args.alpha)
    print(result.report())
    return 0 if result.first_bad else 1


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

    entries = _history(args.history)
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


def _tier(text: str) -> tuple[str, int | None]:
    name, sep, rc = text.partition("=")
    if not sep or not name or not (rc in ("", "-") or rc.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} must be NAME=RC with RC a whole number, e.g. numerics=0 "
                                         "(RC empty or '-' = not run)")
    return name, None if rc in ("", "-") else int(rc)


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD, e.g. 2026-11-22") from None
