"""Latency statistics of N timed runs: average, min and percentiles, each percentile only from enough runs.

The percentile method is numpy's `method="linear"` (Hyndman & Fan 1996, "Sample quantiles in statistical
packages", definition 7; numpy's default and R's `type=7`): the q-quantile of the sorted samples x_1..x_n is
interpolated at rank h = 1 + q (n - 1).

Enough runs: a percentile p (quantile q = p/100) is reported only from n >= ceil(1 / (1 - q)) runs, i.e. p50 from
2, p90 from 10, p99 from 100. With fewer runs the expected number of samples above the q-quantile, n (1 - q), is
below one: the sample most likely holds no observation of the tail the percentile describes, and the type-7 value
is an interpolation towards the maximum, not a tail measurement. Tables print "n/a (needs N runs)" for such a cell
(`cell_text`); code asking for the number (`LatencyStats.percentile`) gets InsufficientRunsError. Never a silent
substitute (e.g. the maximum for p99).

Example:
    >>> s = latency_stats([10.0, 11.0, 12.0])
    >>> s.avg_ms, s.min_ms, s.values[50], s.values[99], s.needs[99]
    (11.0, 10.0, 11.0, None, 100)
    >>> cell_text(s, 99)
    'n/a (needs 100 runs)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fluxperf.errors import FluxperfError

PERCENTILES = (50, 90, 99)
PERCENTILE_METHOD = "linear"  # numpy.percentile(method=...): Hyndman & Fan (1996) definition 7
METHOD_TEXT = ("percentiles: numpy.percentile method='linear' (Hyndman & Fan 1996 type 7); "
               "p_q only from n >= ceil(1/(1-q)) runs (p50: 2, p90: 10, p99: 100)")


class InsufficientRunsError(FluxperfError, ValueError):
    """A percentile was asked of fewer runs than it needs (one line: n, the need, the fix)."""


def runs_needed(p: float) -> int:
    """Runs needed for percentile `p` (0 < p < 100): ceil(1 / (1 - p/100)) = ceil(100 / (100 - p)).

    Computed in percent so that p=99 gives exactly 100 (1 / (1 - 0.99) is 100.00000000000009 in floats).

    Raises:
        ValueError: p outside (0, 100).
    """
    if not 0 < p < 100:
        raise ValueError(f"percentile p={p!r} must be in (0, 100). Fix: e.g. 50, 90 or 99.")
    return max(1, math.ceil(round(100 / (100 - p), 9)))


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of n timed runs (milliseconds).

    Attributes:
        n: number of runs.
        avg_ms, min_ms: arithmetic mean and minimum of the runs.
        values: {p: the p-th percentile in ms, or None where n < needs[p]}.
        needs: {p: runs that percentile p needs (runs_needed)}.
    """

    n: int
    avg_ms: float
    min_ms: float
    values: dict[float, float | None]
    needs: dict[float, int]

    def percentile(self, p: float) -> float:
        """The p-th percentile in ms.

        Raises:
            InsufficientRunsError: fewer runs than p needs.
            KeyError: p was not computed (pass it in `latency_stats(..., percentiles=)`).
        """
        value = self.values[p]
        if value is None:
            raise InsufficientRunsError(
                f"p{_label(p)} from n={self.n} runs: it needs n >= {self.needs[p]} (ceil(1/(1-q)) for q="
                f"{p / 100:g}). Fix: time at least {self.needs[p]} runs (e.g. fluxperf ladder --runs {self.needs[p]}).")
        return value

    def to_dict(self) -> dict:
        """Plain record: n, avg_ms, min_ms, p<p>_ms (None when short), p<p>_needs_runs, method."""
        out = {"n": self.n, "avg_ms": self.avg_ms, "min_ms": self.min_ms}
        for p, v in self.values.items():
            out[f"p{_label(p)}_ms"] = v
            out[f"p{_label(p)}_needs_runs"] = self.needs[p]
        out["method"] = METHOD_TEXT
        return out


def latency_stats(samples_ms: Sequence[float], percentiles: Sequence[float] = PERCENTILES) -> LatencyStats:
    """Average, min and percentiles of `samples_ms` (one latency per timed run, ms; warm-up excluded).

    Raises:
        ValueError: no samples, or a sample that is not a finite number >= 0.
    """
    import numpy as np

    xs = np.asarray(list(samples_ms), dtype=float)
    if xs.size == 0:
        raise ValueError("latency_stats: no samples. Fix: time at least one run.")
    if not np.isfinite(xs).all() or (xs < 0).any():
        raise ValueError(f"latency_stats: samples must be finite and >= 0 ms, got {xs.tolist()}.")
    needs = {p: runs_needed(p) for p in percentiles}
    values = {p: float(np.percentile(xs, p, method=PERCENTILE_METHOD)) if xs.size >= needs[p] else None
              for p in percentiles}
    return LatencyStats(n=int(xs.size), avg_ms=float(xs.mean()), min_ms=float(xs.min()), values=values,
                        needs=needs)


def cell_text(stats: LatencyStats, p: float, fmt: str = "{:.2f}") -> str:
    """Table cell of percentile p: the number, or "n/a (needs N runs)"."""
    value = stats.values[p]
    return f"n/a (needs {stats.needs[p]} runs)" if value is None else fmt.format(value)


def short_cell(value, p: float, fmt: str = "{:.2f}") -> str:
    """Cell text from a bare value (None/NaN: too few runs for p): the number or "n/a (needs N runs)"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"n/a (needs {runs_needed(p)} runs)"
    return fmt.format(value)


def stat_columns(prefix: str = "", percentiles: Sequence[float] = PERCENTILES) -> list[str]:
    """Column names of the statistics, e.g. ["image_avg_ms", "image_min_ms", "image_p50_ms", ...]."""
    return [f"{prefix}avg_ms", f"{prefix}min_ms", *(f"{prefix}p{_label(p)}_ms" for p in percentiles)]


def stat_row(stats: LatencyStats | None, prefix: str = "") -> dict:
    """{column: value} for stat_columns(prefix) (None everywhere when stats is None; None for short percentiles)."""
    cols = stat_columns(prefix, tuple(stats.values) if stats else PERCENTILES)
    if stats is None:
        return dict.fromkeys(cols)
    return dict(zip(cols, [stats.avg_ms, stats.min_ms, *stats.values.values()]))


def percentile_of_column(column: str) -> float | None:
    """p of a column named like "<prefix>p99_ms", else None."""
    import re

    m = re.search(r"(?:^|_)p(\d+(?:\.\d+)?)_ms$", column)
    return float(m.group(1)) if m else None


def _label(p: float) -> str:
    return f"{p:g}"


__all__ = ["PERCENTILES", "PERCENTILE_METHOD", "METHOD_TEXT", "InsufficientRunsError", "LatencyStats",
           "latency_stats", "runs_needed", "cell_text", "short_cell", "stat_columns", "stat_row",
           "percentile_of_column"]
