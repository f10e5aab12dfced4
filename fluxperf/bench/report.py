"""Reports: a pandas table of current vs baseline for every benchmark -> markdown, CSV and a PNG ladder chart.

The markdown suits a CI job summary ($GITHUB_STEP_SUMMARY); the CSV keeps every number; the PNG shows the
transformer-step ladder (one group of bars per rung: baseline and current median).

Latency statistics of each benchmark's per-round samples (stats.data): avg_ms, min_ms, p50_ms, p90_ms, p99_ms
(fluxperf.bench.latency: numpy's linear method, Hyndman & Fan type 7). A percentile needs ceil(1/(1-q)) rounds
(p90: 10, p99: 100): with fewer it is empty in the CSV and "n/a (needs N runs)" in the markdown, whose last line
states the method.

Example:
    >>> cur = [{"fullname": "perf/test_ladder.py::test_transformer_step[bf16]", "param": "bf16",
    ...         "stats": {"data": [0.18, 0.19]}, "extra_info": {}}]
    >>> build_table(cur)["current_ms"].round(1).tolist()
    [185.0]
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path

from fluxperf.bench.latency import METHOD_TEXT, latency_stats, percentile_of_column, short_cell, stat_columns, stat_row
from fluxperf.bench.stats import iqr
from fluxperf.io import atomic_write_bytes, atomic_write_json, atomic_write_text

STATS = tuple(stat_columns())  # avg_ms, min_ms, p50_ms, p90_ms, p99_ms of the current rounds
COLUMNS = ("benchmark", "param", "baseline_ms", "current_ms", "change_pct", "threshold_pct", "iqr_ms", "rounds",
           *STATS, "decided_by", "outcome", "tflops", "mfu", "compile_cold_s", "compile_warm_s", "peak_mem_gib",
           "kernels_per_step", "cached_steps", "reason")


def build_table(current: list[dict], baseline: dict[str, dict] | None = None, comparisons: dict | None = None):
    """One row per current benchmark.

    Args:
        current: pytest-benchmark benchmark dicts of this run.
        baseline: baseline benchmark dicts by fullname (rows without one show no baseline numbers).
        comparisons: Comparison objects or their to_dict(), by fullname.
    """
    import pandas as pd

    rows = []
    for rec in current:
        name = rec["fullname"]
        ms = [x * 1e3 for x in rec["stats"]["data"]]
        x = rec.get("extra_info") or {}
        metrics, proxies = x.get("metrics") or {}, x.get("proxies") or {}
        comp = (comparisons or {}).get(name)
        comp = comp.to_dict() if hasattr(comp, "to_dict") else comp
        base = (baseline or {}).get(name)
        time_check = next((c for c in comp["checks"] if c["quantity"] == "time"), None) if comp else None
        rows.append({
            "benchmark": name.split("::")[-1], "param": rec.get("param"),
            "baseline_ms": statistics.median(x * 1e3 for x in base["stats"]["data"]) if base else None,
            "current_ms": statistics.median(ms), "change_pct": 100 * time_check["change"] if time_check else None,
            "threshold_pct": 100 * time_check["threshold"] if time_check else None,
            "iqr_ms": iqr(ms), "rounds": len(ms), **stat_row(latency_stats(ms) if ms else None), "decided_by": comp["decided_by"] if comp else None,
            "outcome": comp["outcome"] if comp else "no baseline", "tflops": metrics.get("tflops"),
            "mfu": metrics.get("mfu"), "compile_cold_s": metrics.get("compile_cold_s"),
            "compile_warm_s": metrics.get("compile_warm_s"), "peak_mem_gib": proxies.get("peak_mem_gib"),
            "kernels_per_step": proxies.get("kernels_per_step"), "cached_steps": proxies.get("cached_steps"),
            "reason": time_check["reason"] if time_check else "",
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def to_markdown(df, *, title: str = "fluxperf benchmarks: current vs baseline", floatfmt: str = "{:.2f}") -> str:
    """A GitHub-flavoured markdown table (no extra dependency).

    Percentile columns (p<q>_ms) of a row with rounds but too few for that percentile read "n/a (needs N runs)";
    with such columns the table is followed by one line stating the percentile method.
    """
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return ""
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v).replace("|", "\\|")

    cols = list(df.columns)
    percentiles = {c: percentile_of_column(c) for c in cols}
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        rec = dict(zip(cols, row))
        measured = bool(rec.get("rounds"))
        lines.append("| " + " | ".join(short_cell(v, percentiles[c], floatfmt) if percentiles[c] and measured
                                       else cell(v) for c, v in rec.items()) + " |")
    if any(percentiles.values()):
        lines += ["", f"avg/min/p50/p90/p99 over each benchmark's rounds; {METHOD_TEXT}."]
    return "\n".join(lines) + "\n"


def ladder_png(df, path: str | Path, *, benchmark_prefix: str = "test_transformer_step") -> Path:
    """Bar chart of the ladder: baseline and current median per rung, for rows whose benchmark starts with prefix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = df[df["benchmark"].str.startswith(benchmark_prefix)]
    if rows.empty:
        rows = df
    labels = [str(p if p is not None else b) for p, b in zip(rows["param"], rows["benchmark"])]
    xs = range(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
    width = 0.4
    base = [v if v == v and v is not None else 0 for v in rows["baseline_ms"]]
    ax.bar([x - width / 2 for x in xs], base, width, label="baseline", color="#9aa5b1")
    ax.bar([x + width / 2 for x in xs], rows["current_ms"], width, label="current", color="#2b6cb0")
    ax.set_xticks(list(xs), labels, rotation=30, ha="right")
    ax.set_ylabel("median ms")
    ax.set_title("FLUX transformer step per ladder rung")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_reports(df, out_dir: str | Path, *, stem: str = "report", verdict=None) -> dict[str, Path]:
    """Write <stem>.md, <stem>.csv, <stem>-ladder.png and (with a judge.Verdict) <stem>.json into out_dir.

    The markdown ends with the verdict's lines: the outcome, benchmarks that did not run, benchmarks without a
    baseline. Returns the paths by kind. Raises OSError when out_dir cannot be written (callers print the
    verdict first).
    """
    out = Path(out_dir)
    paths = {"markdown": out / f"{stem}.md", "csv": out / f"{stem}.csv", "png": out / f"{stem}-ladder.png"}
    md = to_markdown(df)
    if verdict is not None:
        md += "\n" + "\n".join([f"**{verdict.headline()}**", ""] + [f"- {text}" for _, text in verdict.lines()]) + "\n"
        paths["json"] = out / f"{stem}.json"
        atomic_write_json(paths["json"], verdict.to_dict())
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["csv"], df.to_csv(index=False))
    ladder_png(df, paths["png"])
    return paths
