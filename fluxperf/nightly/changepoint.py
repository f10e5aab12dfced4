"""Change-point detection over a benchmark's nightly series: E-Divisive means (Matteson & James, 2014).

This is the method MongoDB's performance CI and Apache Otava use instead of pairwise thresholds: it looks at
the whole history, finds the split that maximizes the energy distance between "before" and "after", keeps it
when a permutation test says it is significant, and recurses into both halves. A found change is reported
only if the means on both sides also differ by at least `min_rel_change` (noise-level steps are not news).

Example:
    >>> cps = e_divisive([10.0] * 12 + [11.0] * 12, seed=0)
    >>> [c.index for c in cps]
    [12]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ChangePoint:
    """A step change that began at `index` (the first point of the new level)."""

    index: int
    before_mean: float
    after_mean: float
    rel_change: float  # after / before - 1
    p_value: float
    label: str | None = None  # e.g. the nightly's date

    def to_dict(self) -> dict:
        return asdict(self)


def e_divisive(series: Sequence[float], *, alpha: float = 0.01, permutations: int = 199, min_size: int = 3,
               min_rel_change: float = 0.02, seed: int = 0,
               labels: Sequence[str] | None = None) -> list[ChangePoint]:
    """Change points of `series` by E-Divisive means with a permutation test, in index order.

    Args:
        series: one value per nightly (e.g. the nightly's median time), in time order.
        alpha: significance level of the permutation test for each split.
        permutations: permutations per test (p resolution 1 / (permutations + 1)).
        min_size: fewest points on each side of a split (1 noisy night is never a "level").
        min_rel_change: smallest |after/before - 1| of the segment means that is reported.
        seed: RNG seed for the permutations (results are reproducible).
        labels: names of the points (dates); copied onto the change points.

    Example:
        >>> e_divisive([5.0] * 20, seed=1)
        []
    """
    x = np.asarray(series, dtype=float)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("series must be a 1-D sequence of finite numbers (one value per nightly).")
    if min_size < 1 or permutations < 1 or not 0 < alpha < 1:
        raise ValueError(f"min_size={min_size} and permutations={permutations} must be >= 1, alpha={alpha} in (0,1).")
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"labels has {len(labels)} entries for {len(x)} points; give one label per point.")
    rng = np.random.default_rng(seed)
    found = _segment(x, 0, len(x), alpha, permutations, min_size, rng)
    bounds = [0, *sorted(found), len(x)]
    out = []
    for k, index in enumerate(bounds[1:-1], 1):
        before, after = x[bounds[k - 1]:index].mean(), x[index:bounds[k + 1]].mean()
        rel = after / before - 1.0 if before else np.inf
        if abs(rel) >= min_rel_change:
            out.append(ChangePoint(index, float(before), float(after), float(rel), found[index],
                                   labels[index] if labels is not None else None))
    return out


def energy_statistics(x: np.ndarray, min_size: int) -> np.ndarray:
    """Q(tau) for every split tau of `x` (NaN where a side has fewer than `min_size` points).

    Q = m n / (m + n) * (2/(m n) sum|a-b| - 1/C(m,2) sum|a-a'| - 1/C(n,2) sum|b-b'|), with the three sums read
    off a 2-D prefix sum of the distance matrix, so all splits cost O(len(x)^2).
    """
    n = len(x)
    dist = np.abs(x[:, None] - x[None, :])
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = dist.cumsum(0).cumsum(1)
    q = np.full(n + 1, np.nan)
    for tau in range(max(min_size, 2), n - max(min_size, 2) + 1):
        m, k = tau, n - tau
        within_left = prefix[tau, tau] / 2
        cross = prefix[tau, n] - prefix[tau, tau]
        within_right = (prefix[n, n] - prefix[tau, tau] - 2 * cross) / 2
        energy = 2 * cross / (m * k) - within_left / (m * (m - 1) / 2) - within_right / (k * (k - 1) / 2)
        q[tau] = m * k / (m + k) * energy
    return q


def _segment(x: np.ndarray, lo: int, hi: int, alpha: float, permutations: int, min_size: int,
             rng: np.random.Generator) -> dict[int, float]:
    """Recursive binary segmentation of x[lo:hi]: {absolute change index: p-value}."""
    seg = x[lo:hi]
    if len(seg) < 2 * max(min_size, 2) or np.ptp(seg) == 0:
        return {}
    q = energy_statistics(seg, min_size)
    tau = int(np.nanargmax(q))
    observed = q[tau]
    exceed = sum(np.nanmax(energy_statistics(rng.permutation(seg), min_size)) >= observed
                 for _ in range(permutations))
    p = (exceed + 1) / (permutations + 1)
    if p >= alpha:
        return {}
    found = {lo + tau: float(p)}
    found.update(_segment(x, lo, lo + tau, alpha, permutations, min_size, rng))
    found.update(_segment(x, lo + tau, hi, alpha, permutations, min_size, rng))
    return found


def detect_changes(entries, *, names: Sequence[str] | None = None, **kwargs) -> dict[str, list[ChangePoint]]:
    """E-Divisive over each benchmark's nightly medians in a history; change points labelled by date.

    Args:
        entries: history entries (fluxperf.nightly.history.load_history).
        names: benchmarks to analyse (default: all).
        **kwargs: passed to e_divisive (alpha, permutations, min_size, min_rel_change, seed).
    """
    from fluxperf.nightly.history import benchmarks, nightly_series

    entries = list(entries)
    out = {}
    for name in names if names is not None else benchmarks(entries):
        points = nightly_series(entries, name)
        out[name] = e_divisive([p["median_ms"] for p in points], labels=[p["date"] for p in points], **kwargs)
    return out
