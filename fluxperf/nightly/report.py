"""The markdown summary of one nightly (written to $GITHUB_STEP_SUMMARY and kept as an artifact).

Example:
    >>> md = nightly_summary(history, "2026-11-22", tiers={"numerics": 0, "perf": 1})  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fluxperf.nightly.changepoint import ChangePoint
from fluxperf.nightly.confirm import Confirmation

# pytest's exit statuses, then the one judge's (fluxperf.bench.judge.EXIT_STATUS).
_TIER_MEANING = {None: "not run", 0: "passed", 1: "tests failed", 2: "interrupted", 3: "internal error",
                 4: "usage error", 5: "no tests collected", 10: "regression flagged", 11: "inconclusive",
                 12: "baseline error", 13: "no baseline", 14: "nothing measured", 15: "report not written",
                 127: "command not found"}


def nightly_summary(entries: Iterable[dict], date: str, *, tiers: dict[str, int | None] | None = None,
                    confirmation: Confirmation | None = None,
                    changepoints: dict[str, list[ChangePoint]] | None = None,
                    explanations: dict[str, str] | None = None, plots: Iterable[str | os.PathLike] = (),
                    notes: Iterable[str] = ()) -> str:
    """Markdown for nightly `date`: versions, tier exit statuses, benchmark table, confirmation, change points.

    Args:
        entries: the whole history (this nightly's entries must be in it).
        date: the nightly (YYYY-MM-DD).
        tiers: tier name -> exit status (None = not run).
        confirmation: result of fluxperf.nightly.confirm.confirm for this date.
        changepoints: benchmark -> change points (fluxperf.nightly.changepoint.detect_changes).
        explanations: key -> markdown kernel diff with its own heading (what `fluxperf explain --out` writes).
        plots: trend PNG paths (listed by file name; they travel as artifacts).
        notes: extra lines (e.g. "nightly install impossible: ...; ran against torch 2.11.0").
    """
    entries = list(entries)
    tonight = [e for e in entries if e["date"] == date]
    versions = (tonight[-1].get("versions") or {}) if tonight else {}
    out = [f"# fluxperf nightly {date}", ""]
    out += [f"- {k}: `{v}`" for k, v in sorted(versions.items()) if v]
    out += [f"- note: {n}" for n in notes]
    if tiers:
        out += ["", "## Tiers", "", "| tier | exit | meaning |", "|---|---:|---|"]
        out += [f"| {k} | {'–' if v is None else v} | {_TIER_MEANING.get(v, 'failed')} |" for k, v in tiers.items()]
    out += ["", "## Benchmarks", ""] + _bench_table(tonight, confirmation)
    if confirmation is not None:
        out += ["", "## Regression confirmation", ""]
        for status in ("confirmed", "pending", "cleared"):
            for s in confirmation.by_status(status):
                out.append(f"- **{status}** `{s.benchmark}`: {s.why}")
        if not any(s.status != "ok" for s in confirmation.statuses):
            out.append("- no benchmark flagged")
    cps = {k: v for k, v in (changepoints or {}).items() if v}
    out += ["", "## Change points (E-Divisive over the history)", ""]
    out += [f"- `{name}`: step {cp.rel_change:+.1%} began at nightly {cp.label or cp.index} "
            f"({cp.before_mean:.3f} → {cp.after_mean:.3f} ms, p={cp.p_value:.3g})"
            for name, points in sorted(cps.items()) for cp in points] or ["- none"]
    if explanations:
        out += ["", "## Kernel diffs (profiled re-run vs the baseline's kernel table)"]
        for _, table in sorted(explanations.items()):
            out += ["", table.rstrip()]
    plot_names = [Path(p).name for p in plots]
    if plot_names:
        out += ["", "## Trend plots (artifacts)", ""] + [f"- {p}" for p in plot_names]
    return "\n".join(out) + "\n"


def _bench_table(tonight: list[dict], confirmation: Confirmation | None) -> list[str]:
    if not tonight:
        return ["no benchmark records for this nightly"]
    status = {s.benchmark: s.status for s in (confirmation.statuses if confirmation else ())}
    rows = ["| benchmark | attempt | median ms | IQR ms | rounds | vs baseline | verdict | status |",
            "|---|---:|---:|---:|---:|---:|---|---|"]
    for e in sorted(tonight, key=lambda e: (e["benchmark"], e.get("attempt", 1))):
        ratio = e.get("ratio")
        rows.append(f"| `{e['benchmark']}` | {e.get('attempt', 1)} | {e['median_ms']:.3f} | {e.get('iqr_ms', 0):.3f} | "
                    f"{e.get('rounds', '')} | {'–' if ratio is None else f'{ratio - 1:+.1%}'} | "
                    f"{e.get('verdict') or 'no baseline'} | {status.get(e['benchmark'], '')} |")
    return rows
