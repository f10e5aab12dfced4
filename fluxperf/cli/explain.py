"""`fluxperf explain`: per-kernel diff of a benchmark against its baseline kernel table (fluxperf.bench.kernels)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path


def register(subparsers) -> None:
    """Add `fluxperf explain`."""
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
