"""One worker per GPU: `--shard I/N` keeps the I-th of N deterministic, balanced parts of a tier (issue 16).

    pytest -m "gpu and not perf" --shard 0/2      # on GPU 0 (CUDA_VISIBLE_DEVICES=0)
    pytest -m "gpu and not perf" --shard 1/2      # on GPU 1, at the same time
    pytest -m "gpu and not perf" --shard all-gpus # then: the tests that span several GPUs, all GPUs visible

scripts/tiers/gpu-tier.sh and scripts/tiers/perf-tier.sh `--gpus N` run these (see there). The unit of a shard:

* module (the numerics tier): a test module stays whole, so its module-scoped fixtures (a built pipeline, a
  reference image) are made once, in one worker. Weight: the number of selected tests in it.
* perf group (the perf tier, `--shard-by group`; `auto` picks it when every selected test has a perf_group
  marker): a whole group per shard, weighted by its cold time on one H200 (GROUP_COLD_S, the one table of them).

Units are assigned by longest-processing-time first (Graham 1969: largest weight first, each to the least-loaded
shard; ties broken by name and shard index), so the split depends only on the selected test ids and the weights:
every worker computes the same partition, every test is in exactly one shard, and the most-loaded shard exceeds
the least-loaded by at most one unit's weight.

Tests that need several GPUs (the `all_gpus` marker, the perf groups in ALL_GPU_GROUPS) are in no numbered
shard: `--shard all-gpus` selects exactly them, to run after the per-GPU shards with every GPU visible. The numbered shards and `all-gpus` together partition the selection.

A shard that selects nothing never passes silently: pytest exits 14 (fluxperf.bench.judge's not_measured) and says
which shard was empty. Bad values (`--shard 2/2`, `--shard x`) are refused with one line (pytest's usage error).

The command line (scripts/tiers/*.sh use it; no torch imported except by `gpus`):
    python -m fluxperf.bench.shard groups N G1 G2 ...   lines "<i> <groups...>" per shard, then "all-gpus <groups>"
    python -m fluxperf.bench.shard worst S1 S2 ...      the most severe exit status (judge's severity)
    python -m fluxperf.bench.shard gpus N               exit 2 with one line when fewer than N CUDA GPUs are visible
    python -m fluxperf.bench.shard span GROUP           the GPUs one measurement of GROUP spans (1, parallel: 2)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import pytest

ALL_GPUS_MARK = "all_gpus"
# perf group -> GPUs one of its measurements spans (FLUXPERF_GPU_COUNT for its session: baselines/<gpu>x<N>/).
ALL_GPU_GROUPS = {"parallel": 2}
# Cold seconds of each perf group on one H200 (perf/README.md "Groups": measured 2026-11-29/30 where run, the
# README's estimates otherwise; export and compile_faithful resume from kept builds, counted at one 10-minute
# command; experiment 216 s measured with compile_int8 failing early).
GROUP_COLD_S = {
    "base": 118, "compile": 100, "attention": 78, "float8": 60, "flags": 342, "export": 600, "e2e_compile": 180,
    "e2e_full": 420, "dev_cache": 330, "kontext": 270, "experiment": 240, "experiment_dev": 270,
    "compile_faithful": 600, "speed": 480, "parallel": 600,
}
EXIT_NOT_MEASURED = 14  # fluxperf.bench.judge.EXIT_STATUS["not_measured"] (kept import-free for the CLI)
_KEY = pytest.StashKey["ShardState"]()


@dataclass(frozen=True)
class Shard:
    """Which part of the tier this worker runs: index/count, or the all-GPU tests (index None)."""

    index: int | None
    count: int

    def __str__(self) -> str:
        return "all-gpus" if self.index is None else f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'I/N' (0 <= I < N <= 64) or 'all-gpus' -> Shard.

    Raises:
        argparse.ArgumentTypeError: anything else (pytest prints it as one usage line and exits 4).
    """
    text = str(text).strip()
    if text == "all-gpus":
        return Shard(None, 1)
    index, sep, count = text.partition("/")
    if sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count) <= 64:
        return Shard(int(index), int(count))
    raise argparse.ArgumentTypeError(
        f"--shard {text!r}: expected I/N with 0 <= I < N <= 64 (shard I of N, counted from 0) or 'all-gpus'. "
        "Fix: e.g. --shard 0/2 on GPU 0 and --shard 1/2 on GPU 1.")


def assign(weights: dict[str, float], count: int) -> list[list[str]]:
    """Split units over `count` shards, longest processing time first; shard i's units, sorted by name.

    Args:
        weights: unit name -> weight (> 0; seconds or test counts).
        count: shards (>= 1).
    Raises:
        ValueError: count < 1 or a weight that is not a positive number.
    """
    if count < 1:
        raise ValueError(f"assign(count={count!r}): shards must be >= 1")
    bad = {u: w for u, w in weights.items() if not (isinstance(w, int | float) and w > 0)}
    if bad:
        raise ValueError(f"assign: weights must be positive numbers, got {bad}")
    loads = [0.0] * count
    shards: list[list[str]] = [[] for _ in range(count)]
    for unit in sorted(weights, key=lambda u: (-weights[u], u)):
        i = min(range(count), key=lambda s: (loads[s], s))
        loads[i] += weights[unit]
        shards[i].append(unit)
    return [sorted(s) for s in shards]


def group_plan(groups: list[str], count: int) -> tuple[list[list[str]], list[str]]:
    """The perf groups of each of `count` per-GPU shards (by GROUP_COLD_S), and the all-GPU groups apart.

    Raises:
        ValueError: a group without a cold time, or a shard left without a group (more GPUs than groups).
    """
    unknown = sorted(set(groups) - set(GROUP_COLD_S))
    if unknown:
        raise ValueError(f"groups {unknown} have no cold time in fluxperf.bench.shard.GROUP_COLD_S. Fix: add their "
                         "measured cold seconds there (perf/README.md, Groups).")
    per_gpu = {g: GROUP_COLD_S[g] for g in dict.fromkeys(groups) if g not in ALL_GPU_GROUPS}
    whole = [g for g in dict.fromkeys(groups) if g in ALL_GPU_GROUPS]
    shards = assign(per_gpu, count)
    if per_gpu and any(not s for s in shards):
        raise ValueError(f"{len(per_gpu)} per-GPU group(s) over {count} GPUs leaves a GPU with nothing to run. "
                         f"Fix: --gpus {len(per_gpu)} or fewer, or more groups.")
    return shards, whole


def needs_all_gpus(item) -> bool:
    """Whether a test spans several GPUs (the all_gpus marker, or a perf group of ALL_GPU_GROUPS)."""
    return item.get_closest_marker(ALL_GPUS_MARK) is not None or _group_of(item) in ALL_GPU_GROUPS


def _module_of(item) -> str:
    return item.nodeid.split("::", 1)[0]


def _group_of(item) -> str | None:
    marker = item.get_closest_marker("perf_group")
    return marker.args[0] if marker is not None and marker.args else None


@dataclass
class ShardState:
    shard: Shard
    by: str = "module"
    units: list[str] | None = None
    selected: int = 0
    of_total: int = 0


def select(items: list, shard: Shard, by: str) -> tuple[list, list, str, list[str]]:
    """(kept, dropped, unit kind used, this shard's units) for `items` (pytest items, in collection order).

    Raises:
        pytest.UsageError: by="group" with a selected test that has no perf_group marker, or a group without a
            cold time.
    """
    if by == "auto":
        by = "group" if items and all(_group_of(i) for i in items) else "module"
    if shard.index is None:
        kept = [i for i in items if needs_all_gpus(i)]
        return kept, [i for i in items if not needs_all_gpus(i)], by, sorted(
            {(_group_of(i) if by == "group" else _module_of(i)) for i in kept})
    per_gpu = [i for i in items if not needs_all_gpus(i)]
    if by == "group":
        loose = [i.nodeid for i in per_gpu if not _group_of(i)]
        if loose:
            raise pytest.UsageError(f"--shard-by group: {len(loose)} selected test(s) have no perf_group marker, e.g. "
                                    f"{loose[0]}. Fix: --shard-by module, or select only the perf tier.")
        unknown = sorted({_group_of(i) for i in per_gpu} - set(GROUP_COLD_S))
        if unknown:
            raise pytest.UsageError(f"--shard-by group: groups {unknown} have no cold time in "
                                    "fluxperf.bench.shard.GROUP_COLD_S. Fix: add them there.")
        unit_of, weights = _group_of, {g: GROUP_COLD_S[g] for g in {_group_of(i) for i in per_gpu}}
    else:
        unit_of, weights = _module_of, {}
        for i in per_gpu:
            weights[_module_of(i)] = weights.get(_module_of(i), 0) + 1
    mine = assign(weights, shard.count)[shard.index] if weights else []
    wanted = set(mine)
    kept = [i for i in per_gpu if unit_of(i) in wanted]
    kept_ids = {id(i) for i in kept}
    return kept, [i for i in items if id(i) not in kept_ids], by, mine


# -- pytest hooks -------------------------------------------------------------------------------------------
def pytest_addoption(parser):
    group = parser.getgroup("fluxperf", "fluxperf benchmarks")
    group.addoption("--shard", type=parse_shard, default=None, metavar="I/N",
                    help="run only shard I of N (from 0; one per GPU), or 'all-gpus': the tests spanning several GPUs")
    group.addoption("--shard-by", choices=("auto", "module", "group"), default="auto",
                    help="unit of a shard: test module, or perf group (auto: group when every selected test has one)")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{ALL_GPUS_MARK}: spans several GPUs (one process per GPU): in no numbered "
                                       "--shard, selected by --shard all-gpus")


@pytest.hookimpl(trylast=True)  # after -m/-k, --perf-group and every other deselection: shard what is left
def pytest_collection_modifyitems(config, items):
    shard = config.getoption("shard", None)
    if shard is None:
        return
    kept, dropped, by, units = select(list(items), shard, config.getoption("shard_by"))
    config.stash[_KEY] = ShardState(shard, by, units, len(kept), len(items))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(_KEY, None)
    if state is not None and state.selected == 0 and session.exitstatus in (0, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = EXIT_NOT_MEASURED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(_KEY, None)
    if state is None:
        return
    tr = terminalreporter
    tr.section(f"fluxperf: shard {state.shard}")
    if state.selected == 0:
        tr.write_line(f"shard {state.shard} (by {state.by}) selected none of the {state.of_total} tests left after "
                      f"the other selections: nothing was measured (exit status {EXIT_NOT_MEASURED})", red=True)
    else:
        tr.write_line(f"shard {state.shard} (by {state.by}): {state.selected} of {state.of_total} tests, "
                      f"{len(state.units or [])} {state.by}(s): {', '.join(state.units or [])}")


# -- command line for the tier scripts ----------------------------------------------------------------------
def worst_status(statuses: list[int]) -> int:
    """The most severe of several pytest exit statuses: pytest's own and any other non-verdict status first (in
    the order given), then the judge's severity (12 > 10 > 14 > 13 > 11), then 15 (report not written), then 0."""
    from fluxperf.bench.judge import EXIT_STATUS, SEVERITY
    from fluxperf.bench.pytest_plugin import EXIT_REPORT_ERROR

    order = [EXIT_STATUS[o] for o in SEVERITY[:-1]] + [EXIT_REPORT_ERROR, 0]
    other = [s for s in statuses if s not in order]
    if other:
        return other[0]
    return min(statuses, key=order.index) if statuses else 0


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd, rest = (args[0], args[1:]) if args else ("", [])
    try:
        if cmd == "groups" and rest and rest[0].isdigit() and int(rest[0]) >= 1:
            shards, whole = group_plan(rest[1:], int(rest[0]))
            for i, groups in enumerate(shards):
                print(i, *groups)
            print("all-gpus", *whole)
            return 0
        if cmd == "span" and len(rest) == 1:
            print(ALL_GPU_GROUPS.get(rest[0], 1))
            return 0
        if cmd == "worst" and all(s.isdigit() for s in rest):
            print(worst_status([int(s) for s in rest]))
            return 0
        if cmd == "gpus" and len(rest) == 1 and rest[0].isdigit():
            seen = _visible_gpus()
            if seen < int(rest[0]):
                print(f"--gpus {rest[0]}: this machine shows {seen} CUDA GPU(s). Fix: --gpus {seen or 1} or fewer "
                      "(or widen CUDA_VISIBLE_DEVICES).", file=sys.stderr)
                return 2
            return 0
    except ValueError as exc:
        print(f"shard: {exc}", file=sys.stderr)
        return 2
    print("usage: python -m fluxperf.bench.shard groups N GROUP... | worst STATUS... | gpus N | span GROUP", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
