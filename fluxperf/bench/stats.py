"""The decision rule: a benchmark regressed only if the change is both large enough and significant.

Three outcomes (asv's rule, plus a third answer for measurements that cannot be judged):

* REGRESSION: median change > threshold AND one-sided Mann-Whitney U on the per-round samples gives
  p < alpha (0.002, asv's value) that the current samples are larger.
* INCONCLUSIVE: the measurement is invalid (the GPU throttled), or the change is large but not significant
  (too few rounds or too noisy), or there is a large, significant, unexplained improvement (an optimization
  may have stopped doing its work, or the baseline is stale).
* PASS: everything else.

The threshold comes from measured noise: `noise_threshold(noise) = clamp(k * noise, floor, cap)` with a
3% floor (below it, two healthy H100s disagree) and a 10% cap (above it, the benchmark is too noisy to guard
anything and must be fixed, not tolerated).

Example:
    >>> base = [100.0 + 0.1 * i for i in range(20)]
    >>> decide(base, [x * 1.05 for x in base], threshold=0.03).outcome
    'regression'
    >>> decide(base, list(reversed(base)), threshold=0.03).outcome
    'pass'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"
OUTCOMES = (PASS, INCONCLUSIVE, REGRESSION)  # ordered from best to worst

ALPHA = 0.002  # asv's significance level
FLOOR = 0.03
CAP = 0.10
NOISE_MULTIPLIER = 3.0
IMPROVEMENT_FACTOR = 2.0  # an improvement counts as "unexplained" beyond this many thresholds


@dataclass(frozen=True)
class Decision:
    """One verdict on one quantity.

    Attributes:
        outcome: "pass", "regression" or "inconclusive".
        change: current median / baseline median - 1 (0.05 = 5% slower).
        threshold: the minimum effect size used.
        p_slower / p_faster: one-sided Mann-Whitney p-values (None when a test was impossible).
        reason: one sentence saying why.
    """

    outcome: str
    change: float
    threshold: float
    p_slower: float | None
    p_faster: float | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def iqr(samples: Sequence[float]) -> float:
    """Interquartile range Q3 - Q1 of the samples (0 for fewer than 2), the one IQR of fluxperf.

    Quantiles by linear interpolation between order statistics (`statistics.quantiles(method="inclusive")`,
    numpy's default "linear", Hyndman & Fan type 7): for 100..105, 110 (ms) Q1 = 101.5, Q3 = 104.5.

    Example:
        >>> iqr([100, 101, 102, 103, 104, 105, 110])
        3.0
    """
    xs = [float(x) for x in samples]
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


def worst(outcomes: Sequence[str]) -> str:
    """The worst of several outcomes (regression > inconclusive > pass); PASS for none."""
    for name in (REGRESSION, INCONCLUSIVE):
        if name in outcomes:
            return name
    return PASS


def noise_threshold(noise: float, *, k: float = NOISE_MULTIPLIER, floor: float = FLOOR, cap: float = CAP) -> float:
    """Minimum effect size from a relative noise level: clamp(k * noise, floor, cap).

    Args:
        noise: relative noise (e.g. 0.006 for a 0.6% spread of medians); must be finite and >= 0.
        k: how many noise units a real change must exceed.
        floor, cap: bounds of the threshold (0 < floor <= cap).

    Example:
        >>> noise_threshold(0.002), noise_threshold(0.02), noise_threshold(0.5)
        (0.03, 0.06, 0.1)
    """
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise={noise!r} must be a finite number >= 0 (a relative spread such as 0.006).")
    if not 0 < floor <= cap:
        raise ValueError(f"floor={floor!r}, cap={cap!r}: need 0 < floor <= cap.")
    return min(cap, max(floor, k * noise))


def relative_median_error(samples: Sequence[float]) -> float:
    """Robust relative standard error of the median of one run: 1.2533 * (1.4826 * MAD / median) / sqrt(n)."""
    xs = _check_samples("samples", samples)
    med = statistics.median(xs)
    if med <= 0 or len(xs) < 2:
        return 0.0
    mad = statistics.median(abs(x - med) for x in xs)
    return 1.2533 * 1.4826 * mad / med / math.sqrt(len(xs))


def spread_of_medians(medians: Sequence[float]) -> float:
    """Relative standard deviation of the medians of repeated same-code runs (0 for fewer than 2)."""
    xs = _check_samples("medians", medians)
    if len(xs) < 2:
        return 0.0
    return statistics.stdev(xs) / statistics.fmean(xs)


def min_p_value(n: int, m: int) -> float:
    """The smallest one-sided Mann-Whitney p-value possible with n and m samples (exact, no ties): 1 / C(n+m, n)."""
    return 1.0 / math.comb(n + m, n)


def decide(baseline: Sequence[float], current: Sequence[float], *, threshold: float, alpha: float = ALPHA,
           invalid: str | None = None, improvement_factor: float = IMPROVEMENT_FACTOR) -> Decision:
    """Judge per-round samples of one benchmark (lower is better, e.g. milliseconds).

    Args:
        baseline: the baseline's per-round samples.
        current: this run's per-round samples (already normalized, if normalizing).
        threshold: minimum relative effect size for a regression (e.g. 0.03).
        alpha: significance level of the one-sided Mann-Whitney U test.
        invalid: a reason the current measurement cannot be judged (e.g. "thermal slowdown"): INCONCLUSIVE.
        improvement_factor: a significant improvement beyond improvement_factor * threshold is INCONCLUSIVE.
    """
    base, cur = _check_samples("baseline", baseline), _check_samples("current", current)
    if not threshold > 0:
        raise ValueError(f"threshold={threshold!r} must be > 0 (a relative change such as 0.03).")
    change = statistics.median(cur) / statistics.median(base) - 1.0
    p_slower, p_faster = _mann_whitney(base, cur)
    if invalid:
        return Decision(INCONCLUSIVE, change, threshold, p_slower, p_faster,
                        f"measurement invalid ({invalid}); not judged")
    if change > threshold:
        if p_slower is not None and p_slower < alpha:
            return Decision(REGRESSION, change, threshold, p_slower, p_faster,
                            f"{change:+.1%} > {threshold:.1%} and Mann-Whitney p={p_slower:.2g} < {alpha}")
        floor_p = min_p_value(len(base), len(cur))
        why = (f"too few rounds: smallest possible p with {len(base)} vs {len(cur)} rounds is {floor_p:.2g}"
               if floor_p >= alpha else f"not significant (p={_fmt_p(p_slower)} >= {alpha})")
        return Decision(INCONCLUSIVE, change, threshold, p_slower, p_faster, f"{change:+.1%} > {threshold:.1%} but {why}")
    if change < -improvement_factor * threshold and p_faster is not None and p_faster < alpha:
        return Decision(INCONCLUSIVE, change, threshold, p_slower, p_faster,
                        f"unexplained improvement {change:+.1%} (beyond {improvement_factor:g} x {threshold:.1%}): "
                        "check that every optimization still does its work, then update the baseline")
    return Decision(PASS, change, threshold, p_slower, p_faster, f"{change:+.1%} within {threshold:.1%}")


def decide_scalar(baseline: float, current: float, *, threshold: float, invalid: str | None = None,
                  improvement_factor: float = IMPROVEMENT_FACTOR) -> Decision:
    """Judge a single-sample quantity (e.g. cold compile seconds): effect size only, no significance test."""
    if not (baseline > 0 and math.isfinite(current)):
        raise ValueError(f"baseline={baseline!r} must be > 0 and current={current!r} finite.")
    change = current / baseline - 1.0
    if invalid:
        return Decision(INCONCLUSIVE, change, threshold, None, None, f"measurement invalid ({invalid}); not judged")
    if change > threshold:
        return Decision(REGRESSION, change, threshold, None, None, f"{change:+.1%} > {threshold:.1%}")
    if change < -improvement_factor * threshold:
        return Decision(INCONCLUSIVE, change, threshold, None, None,
                        f"unexplained improvement {change:+.1%}: check the stack, then update the baseline")
    return Decision(PASS, change, threshold, None, None, f"{change:+.1%} within {threshold:.1%}")


def _mann_whitney(base: list[float], cur: list[float]) -> tuple[float | None, float | None]:
    """One-sided p-values (current slower, current faster); None when a test is impossible."""
    if len(base) < 2 or len(cur) < 2:
        return None, None
    if len(set(base) | set(cur)) == 1:  # every sample equal: no evidence either way
        return 1.0, 1.0
    from scipy.stats import mannwhitneyu

    slower = float(mannwhitneyu(cur, base, alternative="greater").pvalue)
    faster = float(mannwhitneyu(cur, base, alternative="less").pvalue)
    return slower, faster


def _check_samples(name: str, samples: Sequence[float]) -> list[float]:
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError(f"{name} is empty: a decision needs at least one sample. Fix: measure >= 7 rounds.")
    bad = [x for x in xs if not (math.isfinite(x) and x > 0)]
    if bad:
        raise ValueError(f"{name} holds {bad[:3]}: samples must be finite and > 0 (times in ms).")
    return xs


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"
