"""Compare one benchmark's current record with its baseline record.

Records are pytest-benchmark benchmark dicts: `fullname`, `stats.data` (per-round seconds) and our
`extra_info` (calibration before/after, monitor summary, metrics such as compile seconds, proxies such as
kernels per step). Checks:

* time: per-round samples, decided by `stats.decide` both raw and normalized by the calibration kernels'
  speed factor. The normalized verdict decides when the machines differ by more than the calibration's own
  noise (|factor - 1| > 5%), else the raw one (less noisy); both are reported.
* compile_cold_s / compile_warm_s: single samples, effect size only (threshold from the baseline, floor 20%, and
  never less than COMPILE_ABS_FLOOR_S seconds: short compiles jitter by several seconds).
* proxies (deterministic): kernels_per_step, graph_breaks, recompiles, unique_graphs exactly; peak_mem_gib
  within 3%. More is a regression; less is an unexplained improvement (inconclusive).
A measurement taken while the GPU throttled, while the calibration drifted, or at clocks well below the
baseline's is invalid: its timings are INCONCLUSIVE, never a regression.

Example:
    >>> b = {"fullname": "t", "stats": {"data": [0.100 + 0.0001 * i for i in range(20)]}, "extra_info": {}}
    >>> c = {"fullname": "t", "stats": {"data": [x * 1.06 for x in b["stats"]["data"]]}, "extra_info": {}}
    >>> compare_records(c, b).outcome
    'regression'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fluxperf.bench import calibration as cal
from fluxperf.bench import stats

# Machines within 5% on the calibration kernels count as "the same speed" and are compared raw: on one H100 the
# calibration GEMMs alone vary by several percent between runs (see calibration.MAX_DRIFT), so normalizing by
# a smaller difference adds noise instead of removing machine speed. Across H100s DEVICE.md saw ~6%.
CALIBRATION_TOLERANCE = 0.05
CLOCK_FRACTION = 0.9  # median SM clock below 90% of the baseline's: invalid
EXACT_PROXIES = ("kernels_per_step", "graph_breaks", "recompiles", "unique_graphs")
MEMORY_TOLERANCE = 0.03
# Steps served from a block cache: the cache decides on bf16 residuals, so one step may flip between runs of the
# same code (the H100 cache bench marked first-block-cache images NONDETERMINISTIC); more than that is real.
CACHED_STEPS_TOLERANCE = 1
DEFAULT_COMPILE_THRESHOLD = 0.25
# Cold compile time is one sample per run; on the H100 the same 11 s regional compile measured 11.2 and 14.3 s in
# two runs of the same code (+28%). Changes smaller than this many seconds are never judged a regression.
COMPILE_ABS_FLOOR_S = 15.0


@dataclass
class Check:
    quantity: str
    outcome: str
    baseline: float | None
    current: float | None
    change: float | None
    threshold: float | None
    reason: str


@dataclass
class Comparison:
    """The verdict on one benchmark: every check, the time decisions (raw and normalized) and the context."""

    name: str
    outcome: str
    checks: list[Check]
    baseline_median_ms: float
    current_median_ms: float
    decided_by: str
    speed_factor: float | None
    raw: dict
    normalized: dict | None
    invalid: str | None
    fingerprint_diff: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def time_check(self) -> Check:
        return next(c for c in self.checks if c.quantity == "time")

    def deciding(self) -> list[Check]:
        """The checks whose outcome is the benchmark's outcome (time first when it is among them)."""
        return [c for c in self.checks if c.outcome == self.outcome] or [self.time_check()]

    def summary_line(self) -> str:
        """One line for a passing benchmark."""
        t = self.time_check()
        return (f"PASS {self.name}: {self.baseline_median_ms:.2f} -> {self.current_median_ms:.2f} ms "
                f"({t.change:+.1%}, threshold {t.threshold:.1%}, {self.decided_by} timings)")

    def message(self) -> str:
        """A headline naming what decided, then one line per check that did not pass, then the timing and the
        fingerprint differences. A line never calls a quantity 'within' its threshold unless that check passed."""
        deciding = self.deciding()
        what = ", ".join(c.quantity for c in deciding)
        lines = [f"{self.outcome.upper()} {self.name}: decided by {what}: {deciding[0].reason}"]
        for c in deciding[1:] + [c for c in self.checks if c.outcome not in (stats.PASS, self.outcome)]:
            if c.quantity != "time":
                lines.append(f"  {c.quantity} ({c.outcome}): {c.baseline} -> {c.current} ({c.reason})")
        t = self.time_check()
        factor = "n/a" if self.speed_factor is None else f"{self.speed_factor:.3f}"
        lines.append(f"  time ({t.outcome}): median {self.baseline_median_ms:.2f} ms (baseline) -> "
                     f"{self.current_median_ms:.2f} ms (current), change {t.change:+.1%} (threshold {t.threshold:.1%}), "
                     f"{self.decided_by} timings (machine speed factor from calibration {factor}): {t.reason}")
        lines.append("  fingerprint differences: " + ("; ".join(self.fingerprint_diff) or "none"))
        return "\n".join(lines)


def samples_ms(record: dict) -> list[float]:
    return [x * 1e3 for x in record["stats"]["data"]]


def compare_records(current: dict, baseline: dict, *, thresholds: dict | None = None, current_fp: dict | None = None,
                    baseline_fp: dict | None = None) -> Comparison:
    """Judge `current` against `baseline` (pytest-benchmark benchmark dicts of the same fullname).

    Args:
        thresholds: the baseline's thresholds for this benchmark ({"time": 0.03, "compile_cold_s": 0.2, ...}).
        current_fp, baseline_fp: machine_info["fluxperf"] of both runs, for the fingerprint differences.
    """
    thresholds = thresholds or {}
    cx, bx = current.get("extra_info") or {}, baseline.get("extra_info") or {}
    base, cur = samples_ms(baseline), samples_ms(current)
    threshold = thresholds.get("time") or stats.FLOOR
    invalid = invalid_reason(cx, bx)
    raw = stats.decide(base, cur, threshold=threshold, invalid=invalid)
    factor = _speed_factor(cx, bx)
    norm = stats.decide(base, cal.normalize(cur, factor), threshold=threshold, invalid=invalid) if factor else None
    use_norm = norm is not None and abs(factor - 1.0) > CALIBRATION_TOLERANCE
    chosen = norm if use_norm else raw
    checks = [Check("time", chosen.outcome, chosen_median(base), chosen_median(cur), chosen.change, threshold,
                    chosen.reason)]
    checks += _metric_checks(cx, bx, thresholds, invalid)
    checks += _proxy_checks(cx, bx)
    return Comparison(
        name=current.get("fullname", "?"), outcome=stats.worst([c.outcome for c in checks]), checks=checks,
        baseline_median_ms=chosen_median(base), current_median_ms=chosen_median(cur),
        decided_by="normalized" if use_norm else "raw", speed_factor=factor, raw=raw.to_dict(),
        normalized=norm.to_dict() if norm else None, invalid=invalid,
        fingerprint_diff=fingerprint_diff(baseline_fp or {}, current_fp or {}))


def chosen_median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs)


def invalid_reason(cur_extra: dict, base_extra: dict) -> str | None:
    """Why the current measurement cannot be judged (throttling, calibration drift, low clocks), or None."""
    why = []
    verdict = (cur_extra.get("monitor") or {}).get("verdict") or {}
    if verdict.get("throttled"):
        why.append("GPU throttled: " + ", ".join(verdict.get("reasons", [])))
    calib = cur_extra.get("calibration") or {}
    if calib.get("before") and calib.get("after"):
        d = cal.drift(calib["before"], calib["after"])
        if d > cal.MAX_DRIFT:
            why.append(f"calibration kernels changed {d:.1%} between before and after the benchmark")
    cur_clock = _median_clock(cur_extra)
    base_clock = _median_clock(base_extra)
    if cur_clock and base_clock and cur_clock < CLOCK_FRACTION * base_clock:
        why.append(f"median SM clock {cur_clock:.0f} MHz < {CLOCK_FRACTION:.0%} of the baseline's {base_clock:.0f} MHz")
    return "; ".join(why) or None


def _median_clock(extra: dict) -> float | None:
    return ((extra.get("monitor") or {}).get("sm_clock_mhz") or {}).get("median")


def _speed_factor(cx: dict, bx: dict) -> float | None:
    c, b = cx.get("calibration") or {}, bx.get("calibration") or {}
    if not (c and b):
        return None
    return cal.speed_factor(cal.combine(c.get("before", {}), c.get("after", {})),
                            cal.combine(b.get("before", {}), b.get("after", {})))


def _metric_checks(cx: dict, bx: dict, thresholds: dict, invalid: str | None) -> list[Check]:
    out = []
    cm, bm = cx.get("metrics") or {}, bx.get("metrics") or {}
    for key in ("compile_cold_s", "compile_warm_s"):
        if cm.get(key) is None or not bm.get(key):
            continue
        th = max(thresholds.get(key) or DEFAULT_COMPILE_THRESHOLD, COMPILE_ABS_FLOOR_S / bm[key])
        d = stats.decide_scalar(bm[key], cm[key], threshold=th, invalid=invalid)
        out.append(Check(key, d.outcome, bm[key], cm[key], d.change, th, d.reason))
    return out


def _proxy_checks(cx: dict, bx: dict) -> list[Check]:
    out = []
    cp, bp = cx.get("proxies") or {}, bx.get("proxies") or {}
    for key in (*EXACT_PROXIES, "peak_mem_gib"):
        if cp.get(key) is None or bp.get(key) is None:
            continue
        b, c = bp[key], cp[key]
        tol = MEMORY_TOLERANCE * b if key == "peak_mem_gib" else 0
        change = (c / b - 1.0) if b else None
        if c > b + tol:
            outcome, reason = stats.REGRESSION, f"{key} grew from {b} to {c} (allowed {tol:g})"
        elif c < b - tol:
            outcome, reason = stats.INCONCLUSIVE, (f"unexplained improvement: {key} fell from {b} to {c}; check the "
                                                   "stack still applies every step, then update the baseline")
        else:
            outcome, reason = stats.PASS, "unchanged" if c == b else f"within {tol:g}"
        out.append(Check(key, outcome, b, c, change, MEMORY_TOLERANCE if key == "peak_mem_gib" else 0.0, reason))
    if cp.get("cached_steps") is not None and bp.get("cached_steps") is not None:
        out.append(_cached_steps_check(bp["cached_steps"], cp["cached_steps"]))
    return out


def _cached_steps_check(b: int, c: int) -> Check:
    """Fewer cached steps: the cache engages less (slower) -> regression; more: the image may have degraded or the
    thresholds moved -> inconclusive, like any unexplained improvement."""
    tol = CACHED_STEPS_TOLERANCE
    change = (c / b - 1.0) if b else None
    if c < b - tol:
        return Check("cached_steps", stats.REGRESSION, b, c, change, tol,
                     f"cached_steps fell from {b} to {c} (allowed {tol}): the block cache engages on fewer steps")
    if c > b + tol:
        return Check("cached_steps", stats.INCONCLUSIVE, b, c, change, tol,
                     f"unexplained improvement: cached_steps rose from {b} to {c}; check the image quality and the "
                     "cache thresholds, then update the baseline")
    return Check("cached_steps", stats.PASS, b, c, change, tol, "unchanged" if c == b else f"within {tol}")


def fingerprint_diff(baseline_fp: dict, current_fp: dict) -> list[str]:
    """'torch: 2.11.0 -> 2.12.0'-style lines for every differing version or GPU fact."""
    out = []
    for section in ("versions", "gpu"):
        b, c = baseline_fp.get(section) or {}, current_fp.get(section) or {}
        for key in sorted(set(b) | set(c)):
            if b.get(key) != c.get(key):
                out.append(f"{key}: {b.get(key)} -> {c.get(key)}")
    if baseline_fp.get("host") != current_fp.get("host"):
        out.append(f"host: {baseline_fp.get('host')} -> {current_fp.get('host')}")
    return out
