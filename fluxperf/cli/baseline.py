"""`fluxperf baseline ...`: the only way the files of baselines/<gpu-slug>/ change, and offline checks against them.

    fluxperf baseline update RUN.json [RUN2.json ...]    merge runs into baselines/<gpu-slug>/0001_baseline.json
    fluxperf baseline remove --gpu SLUG BENCHMARK ...    drop records (e.g. an invalid one that cannot be re-recorded)
    fluxperf baseline show [--gpu SLUG]                  list the stored benchmarks, thresholds and provenance
    fluxperf baseline check RUN.json [--report DIR]      the judge on a stored run; exit 0/10/11/12/13/14
    fluxperf baseline numerics MEASURED.json --gpu SLUG|--family sm90 [...]   derive numerics.json thresholds

Only argument parsing and printing live here; the logic is in fluxperf.bench and fluxperf.measure.thresholds.
"""

from __future__ import annotations

import shlex
import sys

from fluxperf.cli._numerics import register_numerics


def register(subparsers) -> None:
    """Add `fluxperf baseline ...` to the parser."""
    p = subparsers.add_parser("baseline", help="per-GPU baselines: update, remove, show, check, numerics")
    verbs = p.add_subparsers(dest="baseline_command", required=True)
    up = verbs.add_parser("update", help="merge pytest --benchmark-json runs into baselines/<gpu-slug>/ (atomic)")
    up.add_argument("runs", nargs="+", help="--benchmark-json files of one GPU; repeated runs set the thresholds")
    _root_arg(up)
    up.set_defaults(func=cmd_update)
    rm = verbs.add_parser("remove", help="drop benchmarks (and their kernel tables) from a GPU's baseline")
    rm.add_argument("benchmarks", nargs="+", help="full node ids, e.g. 'perf/test_ladder.py::test_transformer_step[bf16]'")
    rm.add_argument("--gpu", required=True, help="GPU slug, e.g. nvidia-h100-80gb-hbm3")
    _root_arg(rm)
    rm.set_defaults(func=cmd_remove)
    show = verbs.add_parser("show", help="print a baseline's benchmarks, thresholds and provenance")
    show.add_argument("--gpu", help="GPU slug (default: the GPU of this machine)")
    _root_arg(show)
    show.set_defaults(func=cmd_show)
    check = verbs.add_parser("check", help="judge stored runs against the baseline; exit 0 pass, 10 regression, "
                                           "11 inconclusive, 12 baseline error, 13 no baseline, 14 nothing measured")
    check.add_argument("runs", nargs="+", help="--benchmark-json files (one GPU)")
    check.add_argument("--report", metavar="DIR", help="write report.md, report.csv, report.json, report-ladder.png")
    check.add_argument("--allow-missing-baseline", action="store_true",
                       help="a GPU or benchmark without a baseline passes (said in the output) instead of exit 13")
    _root_arg(check)
    check.set_defaults(func=cmd_check)
    register_numerics(verbs, _root_arg)


def _root_arg(p) -> None:
    p.add_argument("--root", default=None, help="baselines root (default $FLUXPERF_BASELINES or ./baselines)")


def _error(exc) -> int:
    from fluxperf.bench import EXIT_BASELINE_ERROR

    print(f"error: {exc}", file=sys.stderr)
    return EXIT_BASELINE_ERROR


def cmd_update(args) -> int:
    from fluxperf.bench.baseline_update import update_baseline
    from fluxperf.errors import BaselineError

    command = "fluxperf baseline update " + " ".join(shlex.quote(r) for r in args.runs)
    try:
        written = update_baseline(args.runs, root=args.root, command=command)
    except (BaselineError, TimeoutError) as exc:
        return _error(exc)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_remove(args) -> int:
    from fluxperf.bench.baseline_update import remove_benchmarks
    from fluxperf.errors import BaselineError

    names = list(dict.fromkeys(args.benchmarks))  # a name given twice is removed (and counted) once
    command = f"fluxperf baseline remove --gpu {args.gpu} " + " ".join(shlex.quote(b) for b in names)
    try:
        written = remove_benchmarks(args.gpu, names, root=args.root, command=command)
    except (BaselineError, TimeoutError) as exc:
        return _error(exc)
    print(f"removed {len(names)} benchmark(s); wrote {written[0]}")
    return 0


def cmd_show(args) -> int:
    import json
    import statistics

    from fluxperf.bench import EXIT_NO_BASELINE
    from fluxperf.bench.baseline import CREATE_COMMAND, baseline_path, detect_gpu, load_baseline
    from fluxperf.bench.stats import FLOOR
    from fluxperf.errors import BaselineError

    slug = args.gpu or getattr(detect_gpu(), "slug", None)
    if slug is None:
        print("error: no GPU on this machine; pass --gpu SLUG (see baselines/)", file=sys.stderr)
        return 2
    path = baseline_path(slug, args.root)
    if not path.exists():
        print(f"no baseline at {path}. Create one with: {CREATE_COMMAND}")
        return EXIT_NO_BASELINE
    try:
        data = load_baseline(path, expected_slug=slug)
    except BaselineError as exc:
        return _error(exc)
    meta = data["fluxperf"]
    print(f"baseline {path} (GPU {slug})")
    provenance = meta.get("provenance") or {}  # validated: an object when present
    print("provenance: " + json.dumps({k: provenance.get(k) for k in ("git_commit", "date", "command")}))
    for bench in data["benchmarks"]:
        ms = [x * 1e3 for x in bench["stats"]["data"]]
        th = (meta.get("thresholds") or {}).get(bench["fullname"]) or {}
        # the threshold the judge uses (compare.py falls back to the floor), never a made-up 0.0 %
        time = f"{th['time']:.1%}" if "time" in th else f"{FLOOR:.1%} (none stored: the judge's floor)"
        print(f"  {bench['fullname']}: median {statistics.median(ms):.2f} ms over {len(ms)} rounds, "
              f"threshold {time} (runs: {th.get('runs', '?')})")
    return 0


def cmd_check(args) -> int:
    from fluxperf.bench.baseline import CREATE_COMMAND, baseline_path, load_baseline, load_run, run_slug
    from fluxperf.bench.judge import judge_run
    from fluxperf.errors import BaselineError

    try:
        runs = [(r, load_run(r)) for r in args.runs]
        slug = run_slug(runs[0][1], runs[0][0])
        for src, run in runs[1:]:
            if run_slug(run, src) != slug:
                raise BaselineError(f"{src} ran on {run_slug(run, src)!r}, not {slug!r}: check one GPU at a time.")
        path = baseline_path(slug, args.root)
        base = load_baseline(path, expected_slug=slug) if path.exists() else None
    except BaselineError as exc:
        return _error(exc)
    benches = [b for _, run in runs for b in run["benchmarks"]]
    selected = [n for _, run in runs for n in ((run.get("fluxperf") or {}).get("selected") or [])]
    missing = None if base else (f"no baseline for GPU {slug!r} at {path}: nothing was compared. Create one with: "
                                 f"{CREATE_COMMAND}; to let it pass, add --allow-missing-baseline")
    verdict = judge_run(benches, base, expected=selected or None,
                        current_fp=runs[0][1]["machine_info"]["fluxperf"], no_baseline_message=missing,
                        allow_missing_baseline=args.allow_missing_baseline)
    if not selected and base:
        print("note: the run records no selection (older run files): every baselined benchmark is expected")
    for _, text in verdict.lines():
        print(text)
    print(verdict.headline())
    return _report(args.report, benches, base, verdict) if args.report else verdict.exit_status


def _report(out_dir: str, benches: list[dict], base: dict | None, verdict) -> int:
    """Write the reports after the verdict was printed; a write failure keeps the verdict's status (15 on a pass)."""
    from fluxperf.bench.baseline import benchmarks_by_name
    from fluxperf.bench.pytest_plugin import EXIT_REPORT_ERROR
    from fluxperf.bench.report import build_table, write_reports

    table = build_table(benches, benchmarks_by_name(base) if base else None, {c.name: c for c in verdict.comparisons})
    try:
        paths = write_reports(table, out_dir, verdict=verdict)
    except Exception as exc:  # noqa: BLE001 - reported, and the verdict's status stands (15 on a pass)
        print(f"error: report not written to {out_dir}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return verdict.exit_status or EXIT_REPORT_ERROR
    for kind, p in paths.items():
        print(f"report ({kind}): {p}")
    return verdict.exit_status
