"""`fluxperf bisect`: binary-search nightlies for the first bad one (fluxperf.nightly.bisect)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add `fluxperf bisect`."""
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
