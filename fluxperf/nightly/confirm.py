"""Regression confirmation: one noisy night does not page anyone.

A benchmark judged "regression" on a nightly is CONFIRMED when either
  * a confirming re-run of the same nightly (attempt 2, 3, ...) is also "regression", or
  * the previous nightly in the history (the last earlier date with this benchmark) ended "regression"
    (PyTorch HUD's rule: two consecutive bad points).
It is CLEARED when a later attempt of the same nightly is not "regression", and PENDING when it is the only
bad attempt and the previous nightly was fine: the caller re-runs, appends the re-run as the next attempt, and
asks again. `Confirmation.exit_code`: 0 nothing to report, 1 confirmed regression, 3 pending re-run.

Example:
    >>> result = confirm(entries, "2026-11-22")  # doctest: +SKIP
    >>> result.exit_code  # doctest: +SKIP
    0
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fluxperf.bench.stats import REGRESSION

EXIT_OK, EXIT_CONFIRMED, EXIT_PENDING, EXIT_UNJUDGED = 0, 1, 3, 4


@dataclass(frozen=True)
class BenchmarkStatus:
    benchmark: str
    status: str  # "confirmed" | "pending" | "cleared" | "ok" | "unjudged" (no verdict: no baseline)
    why: str
    ratio: float | None = None


@dataclass(frozen=True)
class Confirmation:
    date: str
    statuses: tuple[BenchmarkStatus, ...] = field(default=())

    def by_status(self, status: str) -> list[BenchmarkStatus]:
        return [s for s in self.statuses if s.status == status]

    @property
    def exit_code(self) -> int:
        """1 if any regression is confirmed, else 3 if any is pending a re-run, else 4 if any benchmark was never
        judged (no baseline: nothing was compared, which is not "ok"), else 0."""
        if self.by_status("confirmed"):
            return EXIT_CONFIRMED
        if self.by_status("pending"):
            return EXIT_PENDING
        return EXIT_UNJUDGED if self.by_status("unjudged") else EXIT_OK


def confirm(entries: Iterable[dict], date: str) -> Confirmation:
    """Classify every benchmark of nightly `date` as confirmed / pending / cleared / ok.

    Args:
        entries: the whole history (see fluxperf.nightly.history.load_history).
        date: the nightly to judge (YYYY-MM-DD).
    """
    entries = list(entries)
    tonight: dict[str, list[dict]] = {}
    for e in entries:
        if e["date"] == date:
            tonight.setdefault(e["benchmark"], []).append(e)
    if not tonight:
        raise ValueError(f"the history has no entries for nightly {date!r}; append this nightly's records first.")
    statuses = [_classify(name, sorted(runs, key=_order), entries, date) for name, runs in sorted(tonight.items())]
    return Confirmation(date, tuple(statuses))


def _classify(name: str, runs: list[dict], entries: list[dict], date: str) -> BenchmarkStatus:
    verdicts = [r.get("verdict") for r in runs]
    first_bad = next((i for i, v in enumerate(verdicts) if v == REGRESSION), None)
    ratio = runs[-1].get("ratio")
    if all(v is None for v in verdicts):
        return BenchmarkStatus(name, "unjudged", "never compared with a baseline (no verdict in any attempt)", ratio)
    if first_bad is None:
        return BenchmarkStatus(name, "ok", f"verdicts {verdicts}", ratio)
    later = verdicts[first_bad + 1:]
    if REGRESSION in later:
        return BenchmarkStatus(name, "confirmed", f"regressed again on re-run (verdicts {verdicts})", ratio)
    if later:
        return BenchmarkStatus(name, "cleared", f"re-run did not reproduce it (verdicts {verdicts})", ratio)
    prev = _previous_nightly(entries, name, date)
    if prev is not None and prev[1] == REGRESSION:
        return BenchmarkStatus(name, "confirmed", f"also regressed on the previous nightly {prev[0]}", ratio)
    return BenchmarkStatus(name, "pending", "first bad result; needs a confirming re-run or a second bad nightly",
                           ratio)


def _previous_nightly(entries: list[dict], name: str, date: str) -> tuple[str, str | None] | None:
    """(date, final verdict) of the last nightly before `date` that ran `name`, or None."""
    earlier = [e for e in entries if e["benchmark"] == name and e["date"] < date]
    if not earlier:
        return None
    last_date = max(e["date"] for e in earlier)
    last = max((e for e in earlier if e["date"] == last_date), key=_order)
    return last_date, last.get("verdict")


def _order(entry: dict) -> tuple:
    return entry.get("attempt", 1), entry.get("timestamp", "")
