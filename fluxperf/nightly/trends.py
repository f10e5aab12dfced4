"""Per-benchmark trend plots across nightlies (PNG, matplotlib's Agg backend).

Each plot shows the nightly median (with the IQR as an error bar), marks every nightly whose baseline set
changed (dashed grey line), nightlies judged "regression" (red), and change points found by E-Divisive
(orange line at the first nightly of the new level).

Example:
    >>> paths = plot_trends(load_history("history.jsonl"), "out/plots")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from fluxperf.bench.kernels import kernel_table_path
from fluxperf.io import atomic_write_bytes
from fluxperf.nightly.changepoint import ChangePoint
from fluxperf.nightly.history import benchmarks, nightly_series


def plot_trends(entries: Iterable[dict], out_dir: str | os.PathLike, *, names: Sequence[str] | None = None,
                changepoints: dict[str, list[ChangePoint]] | None = None) -> list[Path]:
    """Write one trend PNG per benchmark into `out_dir`; returns the paths written.

    Args:
        entries: history entries (fluxperf.nightly.history.load_history).
        out_dir: directory for the PNGs (created); file names follow kernel_table_path's naming.
        names: benchmarks to plot (default: all in the history).
        changepoints: benchmark -> change points to mark (e.g. from detect_all).
    """
    entries = list(entries)
    names = list(names) if names is not None else benchmarks(entries)
    unknown = sorted(set(names) - set(benchmarks(entries)))
    if unknown:
        raise ValueError(f"benchmarks {unknown} are not in the history; known: {benchmarks(entries)}")
    paths = []
    for name in names:
        path = kernel_table_path(out_dir, name).with_suffix(".png")
        png = render_trend(name, nightly_series(entries, name), (changepoints or {}).get(name, []))
        paths.append(atomic_write_bytes(path, png))
    return paths


def render_trend(name: str, points: list[dict], changepoints: Sequence[ChangePoint] = ()) -> bytes:
    """PNG bytes of one benchmark's trend (points from nightly_series)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if not points:
        raise ValueError(f"benchmark {name!r} has no nightly points to plot.")
    xs = list(range(len(points)))
    ys = [p["median_ms"] for p in points]
    fig = Figure(figsize=(max(6.0, 0.25 * len(points) + 3), 4), dpi=100)
    ax = fig.add_subplot()
    ax.errorbar(xs, ys, yerr=[p["iqr_ms"] / 2 for p in points], fmt="o-", ms=3, lw=1, capsize=2, label="median (IQR)")
    bad = [i for i, p in enumerate(points) if "regression" in p["verdicts"]]
    if bad:
        ax.scatter(bad, [ys[i] for i in bad], color="red", zorder=3, label="judged regression")
    for i in range(1, len(points)):
        if points[i]["baseline_id"] != points[i - 1]["baseline_id"]:
            ax.axvline(i - 0.5, color="grey", ls="--", lw=1, label=_once(ax, "baseline changed"))
    for cp in changepoints:
        ax.axvline(cp.index - 0.5, color="orange", lw=2, label=_once(ax, "change point"))
        ax.annotate(f"{cp.rel_change:+.1%}", (cp.index - 0.5, max(ys)), color="orange", fontsize=8)
    ax.set_xticks(xs, [_tick(p) for p in points], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("median time (ms)")
    ax.set_title(name if len(name) < 90 else "…" + name[-89:], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _tick(point: dict) -> str:
    torch = (point.get("torch") or "").split("+")[0]  # the local tag (+cu130) is the same on every tick
    return f"{point['date']}\n{torch}" if torch else point["date"]


def _once(ax, label: str) -> str:
    """Legend label only for the first line of its kind."""
    return "_nolegend_" if label in ax.get_legend_handles_labels()[1] else label
