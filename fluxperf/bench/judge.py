"""The one judge: a run of benchmarks against this GPU's baseline -> one Verdict, one outcome, one exit status.

Called by the pytest plugin (`pytest -m gpu --benchmark-compare`), `fluxperf baseline check` and the nightly
(history verdicts, bisect probes); nothing else decides. Per benchmark the rule is `compare.compare_records`
(time by `stats.decide`, proxies, compile seconds); this module adds what a run-level judge must never let pass
silently, each with its own outcome and exit status:

| outcome          | exit | when |
| ---------------- | ---: | ---- |
| `pass`           |  0   | every expected benchmark ran and passed its comparison |
| `regression`     | 10   | a benchmark regressed (time: change > threshold AND Mann-Whitney p < 0.002; or a proxy grew) |
| `inconclusive`   | 11   | throttled / drifting GPU, large-but-not-significant change, unexplained improvement, or a baselined benchmark that was selected but did not run (skipped, errored) |
| `baseline_error` | 12   | the baseline (or a run file) is corrupt, relabelled, from another GPU or holds an invalid record |
| `no_baseline`    | 13   | no baseline for this GPU, or a measured benchmark the baseline lacks (unless `--allow-missing-baseline`) |
| `not_measured`   | 14   | nothing was measured: no benchmark ran (all skipped, none selected, no GPU) |

Severity when several apply (the run's outcome is the most severe): baseline_error > regression > not_measured >
no_baseline > inconclusive > pass. pytest's own failures (exit 1-5) come before all of these in the plugin.

Example:
    >>> v = Verdict(comparisons=[], did_not_run=[], unbaselined=["perf/t.py::t"], no_baseline_message=None)
    >>> v.outcome, v.exit_status
    ('no_baseline', 13)
"""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"
BASELINE_ERROR, NO_BASELINE, NOT_MEASURED = "baseline_error", "no_baseline", "not_measured"
EXIT_STATUS = {PASS: 0, REGRESSION: 10, INCONCLUSIVE: 11, BASELINE_ERROR: 12, NO_BASELINE: 13, NOT_MEASURED: 14}
SEVERITY = (BASELINE_ERROR, REGRESSION, NOT_MEASURED, NO_BASELINE, INCONCLUSIVE, PASS)  # most severe first
ALLOW_MISSING_FLAG = "--allow-missing-baseline"


def most_severe(outcomes) -> str:
    """The most severe of several outcomes (PASS for none)."""
    present = set(outcomes)
    return next((o for o in SEVERITY if o in present), PASS)


@dataclass
class Verdict:
    """Everything the judge concluded about one run.

    Attributes:
        comparisons: compare.Comparison per benchmark that ran and has a baseline record.
        did_not_run: baselined benchmarks that were selected but produced no measurement (skipped, errored).
        unbaselined: benchmarks that ran but have no baseline record.
        no_baseline_message: set when this GPU has no baseline file at all (names the command that creates one).
        error: a baseline/run-file error (the run stops with exit 12).
        allow_missing_baseline: the user accepted missing baselines explicitly (printed in the summary).
    """

    comparisons: list = field(default_factory=list)
    did_not_run: list[str] = field(default_factory=list)
    unbaselined: list[str] = field(default_factory=list)
    no_baseline_message: str | None = None
    error: str | None = None
    allow_missing_baseline: bool = False
    measured: int | None = None  # benchmarks that produced samples (None: count comparisons + unbaselined)

    @property
    def outcome(self) -> str:
        if self.error:
            return BASELINE_ERROR
        found = [c.outcome for c in self.comparisons]
        measured = self.measured if self.measured is not None else len(self.comparisons) + len(self.unbaselined)
        if measured == 0:
            found.append(NOT_MEASURED)
        if (self.no_baseline_message or self.unbaselined) and not self.allow_missing_baseline:
            found.append(NO_BASELINE)
        if self.did_not_run:
            found.append(INCONCLUSIVE)
        return most_severe(found)

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.outcome]

    def lines(self) -> list[tuple[str, str]]:
        """(outcome, text) lines for a terminal or markdown summary, most important first."""
        out = []
        if self.error:
            out.append((BASELINE_ERROR, f"baseline error: {self.error}"))
        if self.no_baseline_message:
            out.append((NO_BASELINE, self.no_baseline_message))
        for c in self.comparisons:
            out.append((c.outcome, c.summary_line() if c.outcome == PASS else c.message()))
        if self.did_not_run:
            out.append((INCONCLUSIVE, f"baselined but did not run ({len(self.did_not_run)}; skipped or errored, so "
                                      f"not compared): {', '.join(self.did_not_run)}"))
        if self.unbaselined:
            out.append((NO_BASELINE, f"ran but not in the baseline ({len(self.unbaselined)}; not compared): "
                                     f"{', '.join(self.unbaselined)}. Fix: add them with `fluxperf baseline update "
                                     "RUN.json` from a run of this GPU"))
        if self.allow_missing_baseline and (self.no_baseline_message or self.unbaselined):
            out.append((PASS, f"missing baselines accepted by {ALLOW_MISSING_FLAG}"))
        if self.outcome == NOT_MEASURED:
            out.append((NOT_MEASURED, "nothing was measured: no benchmark produced samples (all skipped, none "
                                      "selected, or no GPU), so nothing was compared"))
        return out

    def headline(self) -> str:
        return f"fluxperf outcome: {self.outcome.upper()} (exit status {self.exit_status})"

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "exit_status": self.exit_status,
                "comparisons": [c.to_dict() for c in self.comparisons], "did_not_run": list(self.did_not_run),
                "unbaselined": list(self.unbaselined), "no_baseline": self.no_baseline_message, "error": self.error,
                "allow_missing_baseline": self.allow_missing_baseline}


def compare_one(current: dict, baseline: dict, *, current_fp: dict | None = None, remeasure=None):
    """Judge one benchmark record against the (validated) baseline document; None if it holds no record of it.

    Args:
        current: {"fullname", "stats": {"data": per-round seconds}, "extra_info": {...}}.
        baseline: the baseline document (see baseline.load_baseline).
        current_fp: machine_info["fluxperf"] of the current run (for the fingerprint differences).
        remeasure: optional callable returning a fresh record; called once when the first comparison is a
            regression or an invalid measurement, and the second comparison decides (the first is kept in
            current["extra_info"]["remeasure"]).
    """
    from fluxperf.bench.compare import compare_records

    name = current["fullname"]
    ref = next((b for b in baseline.get("benchmarks", []) if b["fullname"] == name), None)
    if ref is None:
        return None
    kwargs = dict(thresholds=(baseline["fluxperf"].get("thresholds") or {}).get(name),
                  current_fp=current_fp, baseline_fp=(baseline.get("machine_info") or {}).get("fluxperf"))
    comparison = compare_records(current, ref, **kwargs)
    if remeasure is not None and (comparison.outcome == REGRESSION or comparison.invalid):
        first, second = comparison, remeasure()
        comparison = compare_records(second, ref, **kwargs)
        current.setdefault("extra_info", {})["remeasure"] = {"first": first.to_dict(),
                                                              "samples_s": list(second["stats"]["data"])}
    return comparison


def judge_run(benchmarks: list[dict], baseline: dict | None, *, expected: list[str] | None = None,
              current_fp: dict | None = None, no_baseline_message: str | None = None,
              allow_missing_baseline: bool = False) -> Verdict:
    """Judge stored benchmark records (a --benchmark-json run) against a baseline document.

    Args:
        benchmarks: the run's benchmark records (validated).
        baseline: the validated baseline document, or None when this GPU has none (then no_baseline_message).
        expected: benchmark names the run selected (the plugin records them); a baselined one among them that
            has no record did not run. None: every benchmark of the baseline is expected.
    """
    verdict = Verdict(no_baseline_message=no_baseline_message, allow_missing_baseline=allow_missing_baseline,
                      measured=len(benchmarks))
    if baseline is None:
        verdict.unbaselined = [] if no_baseline_message else [b["fullname"] for b in benchmarks]
        return verdict
    for bench in benchmarks:
        comparison = compare_one(bench, baseline, current_fp=current_fp)
        if comparison is None:
            verdict.unbaselined.append(bench["fullname"])
        else:
            verdict.comparisons.append(comparison)
    ran = {b["fullname"] for b in benchmarks}
    baselined = [b["fullname"] for b in baseline.get("benchmarks", [])]
    wanted = set(expected) if expected is not None else set(baselined)
    verdict.did_not_run = [n for n in baselined if n in wanted and n not in ran]
    return verdict
