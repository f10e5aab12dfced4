"""Find the first bad nightly between a good and a bad one by binary search.

The good nightly is measured first, on the same machine, as the reference (A/B on one machine, as
Chromium Pinpoint does); then a lower-bound binary search over the later nightlies measures only what it
must. Every probe is judged by `fluxperf.bench.stats.decide` (the CI rule, the one judge's timing rule) on per-round samples, or by
pass/fail for a plain test. For a monotone history of n nightlies (first one good) this takes at most
ceil(log2 n) + 1 measurements, and the reported first bad nightly has always been measured itself.

Installing and measuring are pluggable (`install(version)`, `measure(version) -> Measurement`), so the
search logic is tested on CPU with fakes and runs on a GPU runner with PipInstaller and PytestMeasure.

Example:
    >>> vs = [f"v{i}" for i in range(10)]
    >>> fake = lambda v: Measurement(passed=int(v[1:]) < 6)
    >>> bisect_versions(vs, install=lambda v: None, measure=fake).first_bad
    'v6'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fluxperf.bench.stats import FLOOR, INCONCLUSIVE, REGRESSION, decide
from fluxperf.nightly.install import InstallError


@dataclass(frozen=True)
class Measurement:
    """What one run of the test/benchmark at one nightly gave: pass/fail and per-round samples (ms)."""

    passed: bool = True
    samples_ms: tuple[float, ...] = ()
    detail: str = ""

    @property
    def median_ms(self) -> float | None:
        import statistics

        return statistics.median(self.samples_ms) if self.samples_ms else None


@dataclass(frozen=True)
class Probe:
    version: str
    outcome: str  # "reference" | "good" | "bad" | "skipped"
    measurement: Measurement | None
    reason: str


@dataclass
class BisectResult:
    first_bad: str | None
    last_good: str | None
    probes: list[Probe] = field(default_factory=list)

    @property
    def runs(self) -> int:
        """How many measurements were taken (installs that failed are not runs)."""
        return sum(p.outcome != "skipped" for p in self.probes)

    def report(self) -> str:
        """Human-readable lines: every probe, then the verdict with the measured values."""
        lines = [f"{p.version:<32} {p.outcome:<9} {_fmt(p.measurement)}  {p.reason}" for p in self.probes]
        if self.first_bad is None:
            lines.append("no bad nightly found: the 'bad' end did not reproduce the failure/regression.")
        else:
            bad = next(p for p in self.probes if p.version == self.first_bad and p.outcome == "bad")
            lines.append(f"first bad nightly: {self.first_bad} ({_fmt(bad.measurement)}; {bad.reason}); "
                         f"last good: {self.last_good}")
        return "\n".join(lines)


def judge(reference: Measurement, current: Measurement, **decide_kwargs) -> tuple[str, str]:
    """("good"|"bad"|"inconclusive", reason) for `current` against `reference`, by the CI rule."""
    if not current.passed:
        return "bad", f"test failed {current.detail}".strip()
    if not (reference.samples_ms and current.samples_ms):
        return "good", "test passed"
    threshold = decide_kwargs.get("rel_threshold") or FLOOR
    alpha = {"alpha": decide_kwargs["alpha"]} if decide_kwargs.get("alpha") else {}
    d = decide(list(reference.samples_ms), list(current.samples_ms), threshold=threshold, **alpha)
    outcome = {REGRESSION: "bad", INCONCLUSIVE: "inconclusive"}.get(d.outcome, "good")
    return outcome, d.reason


def bisect_versions(versions: Sequence[str], *, install: Callable[[str], None],
                    measure: Callable[[str], Measurement], reference: Measurement | None = None,
                    max_repeats: int = 1, log: Callable[[str], None] | None = None,
                    **decide_kwargs) -> BisectResult:
    """First bad version in `versions` (ordered oldest first; versions[0] is the known-good one).

    Args:
        versions: the nightlies from good to bad inclusive (>= 2).
        install: installs one version (raise InstallError to skip a nightly that cannot be installed).
        measure: runs the test/benchmark once on the installed version (InstallError skips it too).
        reference: judge against this measurement instead of measuring versions[0] (e.g. a stored baseline).
        max_repeats: extra measurements pooled into an inconclusive probe before it is called good.
        log: receives one line per probe (progress).
        **decide_kwargs: rel_threshold (default stats.FLOOR) / alpha (default stats.ALPHA) for stats.decide().
    """
    if len(versions) < 2:
        raise ValueError(f"need the good and the bad nightly at least; got {list(versions)}.")
    result = BisectResult(None, versions[0])
    say = log or (lambda line: None)
    if reference is None:
        _install(install, versions[0])
        reference = measure(versions[0])
        if not reference.passed:
            raise ValueError(f"the good nightly {versions[0]} fails the test itself ({reference.detail}); "
                             "pick an earlier good nightly.")
        result.probes.append(Probe(versions[0], "reference", reference, "the good end, measured as reference"))
        say(f"reference {versions[0]}: {_fmt(reference)}")
    candidates = list(versions[1:])
    lo, hi = 0, len(candidates)  # invariant: everything before lo is good, candidates[hi] (if any) is bad
    while lo < hi:
        mid = (lo + hi) // 2
        version = candidates[mid]
        try:
            _install(install, version)
            outcome, reason, m = _probe(version, measure, reference, max_repeats, decide_kwargs)
        except InstallError as exc:  # git-bisect-skip: drop this nightly and keep searching
            result.probes.append(Probe(version, "skipped", None, str(exc)))
            say(f"skip {version}: {exc}")
            del candidates[mid]
            hi -= 1
            continue
        result.probes.append(Probe(version, outcome, m, reason))
        say(f"{version}: {outcome} ({_fmt(m)}; {reason})")
        if outcome == "bad":
            hi = mid
        else:
            lo = mid + 1
    if hi < len(candidates):
        result.first_bad = candidates[hi]
        result.last_good = candidates[hi - 1] if hi > 0 else versions[0]
    return result


def _probe(version, measure, reference, max_repeats, decide_kwargs) -> tuple[str, str, Measurement]:
    m = measure(version)
    outcome, reason = judge(reference, m, **decide_kwargs)
    for _ in range(max_repeats):
        if outcome != "inconclusive":
            break
        more = measure(version)  # Pinpoint: add repeats rather than loosen the threshold
        m = Measurement(m.passed and more.passed, m.samples_ms + more.samples_ms, more.detail)
        outcome, reason = judge(reference, m, **decide_kwargs)
    if outcome == "inconclusive":
        return "good", f"{reason}; still inconclusive after repeats, counted as good", m
    return outcome, reason, m


def _install(install: Callable[[str], None], version: str) -> None:
    install(version)


@dataclass(frozen=True)
class PytestMeasure:
    """Run one pytest node id in a fresh interpreter (so a newly installed torch is used) and read its samples.

    A benchmark's per-round samples come from --benchmark-json; a plain test gives pass/fail. A test that
    was skipped (e.g. a package missing at that nightly) raises InstallError, so bisect skips that nightly.
    """

    test_id: str
    pytest_args: tuple[str, ...] = ("-m", "")  # "" lifts the default "not gpu" deselection
    timeout: float = 1800.0

    def __call__(self, version: str) -> Measurement:
        import json
        import subprocess
        import sys
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *self.pytest_args,
                   self.test_id, f"--benchmark-json={out}"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
            doc = json.loads(out.read_text()) if out.exists() else {}
        tail = (done.stdout + done.stderr).strip()[-600:]
        if done.returncode in (4, 5):
            raise ValueError(f"pytest collected nothing for {self.test_id!r} (exit {done.returncode}): {tail}")
        if done.returncode == 0 and " passed" not in done.stdout and " skipped" in done.stdout:
            raise InstallError(f"{self.test_id} was skipped at {version}: {tail}")
        return Measurement(done.returncode == 0, _samples(doc, self.test_id), tail if done.returncode else "")


def _samples(doc: dict, test_id: str) -> tuple[float, ...]:
    benches = doc.get("benchmarks") or []
    mine = [b for b in benches if b.get("fullname") and test_id.endswith(b["fullname"])]
    chosen = mine[0] if mine else (benches[0] if len(benches) == 1 else None)
    if chosen is None:
        return ()
    return tuple(float(x) * 1e3 for x in chosen["stats"].get("data") or ())


def _fmt(m: Measurement | None) -> str:
    if m is None:
        return "not measured"
    if m.samples_ms:
        return f"median {m.median_ms:.3f} ms over {len(m.samples_ms)} rounds"
    return "passed" if m.passed else "failed"
