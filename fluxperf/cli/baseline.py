"""`fluxperf baseline update|show|check`: the only way baselines change, and offline checks against them.

    fluxperf baseline update RUN.json [RUN2.json ...]   merge runs into baselines/<gpu-slug>/0001_baseline.json
    fluxperf baseline show [--gpu SLUG]                   list the stored benchmarks, thresholds and provenance
    fluxperf baseline check RUN.json [--report DIR]       the decision rule on a stored run; exit 0/10/11/12

Only argument parsing and printing live here; the logic is in fluxperf.bench.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Add `fluxperf baseline ...` to the parser."""
    p = subparsers.add_parser("baseline", help="per-GPU benchmark baselines: update (explicitly), show, check")
    verbs = p.add_subparsers(dest="baseline_command", required=True)
    up = verbs.add_parser("update", help="merge pytest --benchmark-json runs into baselines/<gpu-slug>/ (atomic)")
    up.add_argument("runs", nargs="+", help="--benchmark-json files of one GPU; repeated runs set the thresholds")
    _root_arg(up)
    up.set_defaults(func=cmd_update)
    show = verbs.add_parser("show", help="print a baseline's benchmarks, thresholds and provenance")
    show.add_argument("--gpu", help="GPU slug (default: the GPU of this machine)")
    _root_arg(show)
    show.set_defaults(func=cmd_show)
    check = verbs.add_parser("check", help="judge stored runs against the baseline; exit 0 pass, 10 regression, "
                                           "11 inconclusive, 12 baseline error")
    check.add_argument("runs", nargs="+", help="--benchmark-json files")
    check.add_argument("--report", metavar="DIR", help="write report.md, report.csv and report-ladder.png here")
    _root_arg(check)
    check.set_defaults(func=cmd_check)


def _root_arg(p) -> None:
    p.add_argument("--root", default=None, help="baselines root (default $FLUXPERF_BASELINES or ./baselines)")


def cmd_update(args) -> int:
    from fluxperf.bench import EXIT_BASELINE_ERROR
    from fluxperf.bench.baseline import update_baseline
    from fluxperf.errors import BaselineError

    command = "fluxperf baseline update " + " ".join(shlex.quote(r) for r in args.runs)
    try:
        written = update_baseline(args.runs, root=args.root, command=command)
    except BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BASELINE_ERROR
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_show(args) -> int:
    from fluxperf.bench import EXIT_BASELINE_ERROR
    from fluxperf.bench.baseline import baseline_path, detect_gpu_name, load_baseline
    from fluxperf.env import gpu_slug
    from fluxperf.errors import BaselineError

    slug = args.gpu or gpu_slug(detect_gpu_name())
    path = baseline_path(slug, args.root)
    if not path.exists():
        print(f"no baseline at {path}")
        return 0
    try:
        data = load_baseline(path, expected_slug=slug)
    except BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BASELINE_ERROR
    meta = data["fluxperf"]
    print(f"baseline {path} (GPU {slug})")
    print("provenance: " + json.dumps({k: meta["provenance"].get(k) for k in ("git_commit", "date", "command")}))
    for bench in data["benchmarks"]:
        ms = [x * 1e3 for x in bench["stats"]["data"]]
        th = meta.get("thresholds", {}).get(bench["fullname"], {})
        print(f"  {bench['fullname']}: median {statistics.median(ms):.2f} ms over {len(ms)} rounds, "
              f"threshold {th.get('time', 0):.1%} (runs: {th.get('runs', '?')})")
    return 0


def cmd_check(args) -> int:
    from fluxperf.bench import EXIT_BASELINE_ERROR, EXIT_INCONCLUSIVE, EXIT_REGRESSION
    from fluxperf.bench.baseline import CREATE_COMMAND, baseline_path, benchmarks_by_name, load_baseline, run_slug
    from fluxperf.bench.compare import compare_records
    from fluxperf.bench.stats import worst
    from fluxperf.errors import BaselineError

    try:
        runs = [(r, json.loads(Path(r).read_text(encoding="utf8"))) for r in args.runs]
        slug = run_slug(runs[0][1], runs[0][0])
        path = baseline_path(slug, args.root)
        if not path.exists():
            print(f"no baseline for GPU {slug!r} at {path}; comparison skipped. Create one with: {CREATE_COMMAND}")
            return 0
        base = load_baseline(path, expected_slug=slug)
        for src, run in runs[1:]:
            load_slug = run_slug(run, src)
            if load_slug != slug:
                raise BaselineError(f"{src} ran on {load_slug!r}, not {slug!r}: check one GPU at a time.")
    except (OSError, json.JSONDecodeError, BaselineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BASELINE_ERROR
    by_name, meta = benchmarks_by_name(base), base["fluxperf"]
    comparisons, current = {}, []
    for _, run in runs:
        for bench in run.get("benchmarks", []):
            current.append(bench)
            ref = by_name.get(bench["fullname"])
            if ref is None:
                print(f"not in the baseline (not compared): {bench['fullname']}")
                continue
            c = compare_records(bench, ref, thresholds=meta.get("thresholds", {}).get(bench["fullname"]),
                                current_fp=run.get("machine_info", {}).get("fluxperf"),
                                baseline_fp=base.get("machine_info", {}).get("fluxperf"))
            comparisons[c.name] = c
            print(c.message() if c.outcome != "pass" else f"PASS {c.name}: {c.checks[0].reason} ({c.decided_by})")
    if args.report:
        from fluxperf.bench.report import build_table, write_reports

        for kind, p in write_reports(build_table(current, by_name, comparisons), args.report).items():
            print(f"report ({kind}): {p}")
    outcome = worst([c.outcome for c in comparisons.values()])
    print(f"outcome: {outcome.upper()}")
    return {"regression": EXIT_REGRESSION, "inconclusive": EXIT_INCONCLUSIVE}.get(outcome, 0)
