"""The good/bad rule for one benchmark: baseline samples vs current samples.

A change counts only when it is both large (relative change of the medians beyond `rel_threshold`) and
significant (one-sided Mann-Whitney U on the per-round samples, p < `alpha`), as asv and Chromium Pinpoint
judge. Too few rounds to ever reach `alpha` gives "inconclusive", never a verdict.

`decide()` uses the benchmark tier's own rule, fluxperf.bench.stats.decide (asv's rule with thresholds
derived from measured noise), whenever that module is importable, so bisect and the history judge exactly as
CI does; `fallback_decide()` below is the same rule in miniature for when it is not. `confirm`, `history` and
`bisect` all call `decide()`, so the rule is swapped in this one place.

Example:
    >>> decide([10.0 + 0.01 * i for i in range(10)], [12.0 + 0.01 * i for i in range(10)]).verdict
    'regressed'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

VERDICTS = ("unchanged", "regressed", "improved", "inconclusive")
DEFAULT_REL_THRESHOLD = 0.05  # same machine, nightly vs baseline: within-machine medians vary < 1 %
DEFAULT_ALPHA = 0.01  # one-sided; 5 vs 5 rounds can reach p = 1/252 = 0.004


@dataclass(frozen=True)
class Decision:
    """Outcome of comparing two sample sets (lower is better, e.g. milliseconds)."""

    verdict: str
    baseline_median: float
    current_median: float
    ratio: float  # current / baseline median
    p_value: float | None
    reason: str
    rule: str = "fallback"  # "fluxperf.bench.stats" when the benchmark tier's rule decided

    def to_dict(self) -> dict:
        return asdict(self)


def decide(baseline: Sequence[float], current: Sequence[float], *, rel_threshold: float | None = None,
           alpha: float | None = None) -> Decision:
    """Judge `current` against `baseline` by the CI rule: fluxperf.bench.stats when present, else the fallback.

    Args:
        baseline, current: per-round samples (lower is better).
        rel_threshold: minimum relative change (default: the rule's own default, 3 % or 5 %).
        alpha: significance level (default: the rule's own, 0.002 or 0.01).
    """
    stats = _bench_stats()
    if stats is None:
        return fallback_decide(baseline, current, rel_threshold=rel_threshold or DEFAULT_REL_THRESHOLD,
                               alpha=alpha or DEFAULT_ALPHA)
    _check_samples("baseline", baseline)
    _check_samples("current", current)
    d = stats.decide(list(baseline), list(current), threshold=rel_threshold or stats.FLOOR,
                     alpha=alpha or stats.ALPHA)
    verdict = {"regression": "regressed", "inconclusive": "inconclusive"}.get(d.outcome, "unchanged")
    p = d.p_slower if d.change > 0 else d.p_faster
    return Decision(verdict, statistics.median(baseline), statistics.median(current), 1.0 + d.change, p, d.reason,
                    "fluxperf.bench.stats")


def _bench_stats():
    """fluxperf.bench.stats if it can be imported (it imports no torch), else None."""
    import importlib
    import importlib.util

    try:
        if importlib.util.find_spec("fluxperf.bench.stats") is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module("fluxperf.bench.stats")


def fallback_decide(baseline: Sequence[float], current: Sequence[float], *,
                    rel_threshold: float = DEFAULT_REL_THRESHOLD, alpha: float = DEFAULT_ALPHA) -> Decision:
    """Judge `current` against `baseline` (per-round times, lower is better) without fluxperf.bench.

    Args:
        baseline: per-round samples of the reference (>= 1).
        current: per-round samples of the candidate (>= 1).
        rel_threshold: smallest relative change of the medians that counts (0.05 = 5 %).
        alpha: significance level of the one-sided Mann-Whitney U test.

    Example:
        >>> fallback_decide([1.0, 1.01, 0.99], [1.0, 1.0, 1.01]).verdict
        'unchanged'
    """
    _check_samples("baseline", baseline)
    _check_samples("current", current)
    if not (0 < rel_threshold < 10 and 0 < alpha < 1):
        raise ValueError(f"rel_threshold={rel_threshold} must be in (0, 10) and alpha={alpha} in (0, 1).")
    b_med, c_med = statistics.median(baseline), statistics.median(current)
    ratio = c_med / b_med if b_med > 0 else math.inf
    if abs(ratio - 1.0) <= rel_threshold:
        return Decision("unchanged", b_med, c_med, ratio, None,
                        f"median changed {ratio - 1:+.1%}, within the ±{rel_threshold:.0%} threshold")
    slower = ratio > 1.0
    if min_p_value(len(baseline), len(current)) >= alpha:
        return Decision("inconclusive", b_med, c_med, ratio, None,
                        f"median changed {ratio - 1:+.1%} but {len(baseline)} vs {len(current)} rounds can never "
                        f"reach p < {alpha}; add rounds")
    p = _mann_whitney_p(baseline, current, slower)
    if p >= alpha:
        return Decision("inconclusive", b_med, c_med, ratio, p,
                        f"median changed {ratio - 1:+.1%} but Mann-Whitney p={p:.3g} >= {alpha} (noise)")
    verdict = "regressed" if slower else "improved"
    return Decision(verdict, b_med, c_med, ratio, p, f"median changed {ratio - 1:+.1%}, Mann-Whitney p={p:.3g}")


def min_p_value(n_baseline: int, n_current: int) -> float:
    """Smallest one-sided exact Mann-Whitney p-value reachable with these sample counts: 1 / C(n+m, n)."""
    return 1.0 / math.comb(n_baseline + n_current, n_baseline)


def _mann_whitney_p(baseline: Sequence[float], current: Sequence[float], slower: bool) -> float:
    from scipy.stats import mannwhitneyu

    # H1: current is stochastically greater (slower) than baseline, or less when it got faster.
    alternative = "greater" if slower else "less"
    method = "exact" if len(baseline) + len(current) <= 40 else "asymptotic"
    return float(mannwhitneyu(current, baseline, alternative=alternative, method=method).pvalue)


def _check_samples(name: str, samples: Sequence[float]) -> None:
    if len(samples) < 1:
        raise ValueError(f"{name} has no samples; need at least 1 per-round time (pytest-benchmark stats.data).")
    bad = [s for s in samples if not math.isfinite(s) or s < 0]
    if bad:
        raise ValueError(f"{name} has invalid samples {bad[:3]}: times must be finite and >= 0.")
