"""One noisy night does not page anyone: regression confirmation over the history."""

import pytest

from fluxperf.nightly.confirm import EXIT_CONFIRMED, EXIT_OK, EXIT_PENDING, confirm


def entry(date, verdict, attempt=1, name="b1"):
    return {"date": date, "benchmark": name, "attempt": attempt, "verdict": verdict, "ratio": 1.1,
            "timestamp": f"{date}T0{attempt}:00:00"}


def status(result, name="b1"):
    return next(s for s in result.statuses if s.benchmark == name).status


def test_single_bad_night_is_pending_not_failed():
    r = confirm([entry("2026-11-20", "pass"), entry("2026-11-21", "regression")], "2026-11-21")
    assert status(r) == "pending" and r.exit_code == EXIT_PENDING


def test_second_bad_nightly_confirms():
    r = confirm([entry("2026-11-20", "regression"), entry("2026-11-21", "regression")], "2026-11-21")
    assert status(r) == "confirmed" and r.exit_code == EXIT_CONFIRMED
    assert "2026-11-20" in r.statuses[0].why


def test_confirming_rerun_confirms():
    r = confirm([entry("2026-11-21", "regression"), entry("2026-11-21", "regression", attempt=2)], "2026-11-21")
    assert status(r) == "confirmed" and "re-run" in r.statuses[0].why


def test_rerun_that_does_not_reproduce_clears():
    r = confirm([entry("2026-11-20", "regression"), entry("2026-11-21", "regression"),
                 entry("2026-11-21", "pass", attempt=2)], "2026-11-21")
    assert status(r) == "cleared" and r.exit_code == EXIT_OK


def test_previous_night_cleared_by_its_rerun_does_not_confirm():
    hist = [entry("2026-11-20", "regression"), entry("2026-11-20", "pass", attempt=2),
            entry("2026-11-21", "regression")]
    assert status(confirm(hist, "2026-11-21")) == "pending"


def test_only_the_previous_nightly_counts_not_older_ones():
    hist = [entry("2026-11-19", "regression"), entry("2026-11-20", "pass"), entry("2026-11-21", "regression")]
    assert status(confirm(hist, "2026-11-21")) == "pending"


def test_benchmarks_are_judged_separately():
    hist = [entry("2026-11-20", "regression", name="a"), entry("2026-11-21", "regression", name="b"),
            entry("2026-11-21", "pass", name="a")]
    r = confirm(hist, "2026-11-21")
    assert status(r, "a") == "ok" and status(r, "b") == "pending"


def test_unknown_date_names_the_fix():
    with pytest.raises(ValueError, match="append this nightly"):
        confirm([entry("2026-11-20", "pass")], "2026-11-22")
