"""The nightly history: one JSON line per (nightly run, benchmark), appended atomically.

Each line holds the nightly date, run id and attempt (a confirming re-run is attempt 2 of the same date),
versions (torch, torchao, ...), GPU, the baseline it was compared with, the median and a summary of the
per-round samples (the samples themselves, capped, so later decisions can re-test them), and the verdict of
the one judge (fluxperf.bench.judge) against the baseline: "pass", "regression" or "inconclusive".

Example:
    >>> entries = entries_from_benchmark_json(json_doc, date="2026-11-22", run_id="n1")  # doctest: +SKIP
    >>> append_entries("history.jsonl", entries)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import statistics
from collections.abc import Iterable
from pathlib import Path

from fluxperf.bench.stats import INCONCLUSIVE, PASS, REGRESSION, iqr
from fluxperf.io import atomic_write_bytes, locked

SCHEMA = 1
MAX_SAMPLES = 1000  # per entry; enough for any Mann-Whitney re-test, bounded file growth
_MS = 1e3  # pytest-benchmark stores seconds


def entries_from_benchmark_json(doc: dict, *, date: str, run_id: str, attempt: int = 1,
                                baseline: dict | None = None, baseline_id: str | None = None,
                                versions: dict | None = None, gpu: str | None = None) -> list[dict]:
    """History entries (one per benchmark) from one pytest-benchmark JSON document.

    Args:
        doc: the parsed `--benchmark-json` file ("benchmarks", "machine_info", "commit_info").
        date: the nightly's date, YYYY-MM-DD.
        run_id: identifies this nightly run (e.g. the CI run id).
        attempt: 1 for the nightly, 2+ for confirming re-runs of the same nightly.
        baseline: the validated baseline document (fluxperf.bench.baseline.load_baseline), for the verdict.
        baseline_id: id of the baseline (trend plots mark where it changes; see `baseline_id`).
        versions: package versions; default: machine_info["versions"] or the installed ones.
        gpu: GPU slug; default: machine_info["fluxperf"]["slug"], machine_info["gpu"] or "unknown".

    The verdict is the perf tier's own (extra_info["verdict"]["outcome"], written by the fluxperf pytest
    plugin) when the record has one; otherwise the one judge (fluxperf.bench.judge.compare_one) against
    `baseline`; otherwise None.
    """
    _check_date(date)
    if not isinstance(doc.get("benchmarks"), list) or not doc["benchmarks"]:
        raise ValueError("benchmark JSON has no 'benchmarks' list; pass a file written by pytest --benchmark-json.")
    machine = doc.get("machine_info") or {}
    ours = machine.get("fluxperf") or {}  # added by fluxperf.bench.pytest_plugin
    versions = versions or ours.get("versions") or machine.get("versions") or _installed_versions()
    gpu = gpu or ours.get("slug") or _gpu_slug(machine)
    commit = (doc.get("commit_info") or {}).get("id")
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out = []
    for bench in doc["benchmarks"]:
        entry = {"schema": SCHEMA, "date": date, "run_id": run_id, "attempt": attempt, "timestamp": stamp,
                 "benchmark": benchmark_key(bench), "group": bench.get("group"), "versions": versions, "gpu": gpu,
                 "git_commit": commit, "baseline_id": baseline_id, **summarize(bench),
                 "extra_info": bench.get("extra_info") or {}}
        entry.update(_verdict(bench, baseline, ours))
        out.append(entry)
    return out


def benchmark_key(bench: dict) -> str:
    """The name a benchmark goes by in history, baselines and kernel tables: its full node id when known."""
    key = bench.get("fullname") or bench.get("name")
    if not key:
        raise ValueError(f"benchmark entry without 'fullname' or 'name': keys {sorted(bench)}")
    return key


def summarize(bench: dict) -> dict:
    """Median/IQR/mean/min/max/stddev (ms), rounds and the per-round samples (ms) of one benchmark entry."""
    stats = bench.get("stats") or {}
    data = stats.get("data")
    if not data:
        raise ValueError(f"benchmark {bench.get('name')!r} has no per-round samples (stats.data); pytest-benchmark "
                         "keeps them in --benchmark-json output unless --benchmark-skip/--benchmark-disable was used.")
    samples = [float(x) * _MS for x in data]
    return {"median_ms": statistics.median(samples), "iqr_ms": iqr(samples), "mean_ms": statistics.fmean(samples),
            "min_ms": min(samples), "max_ms": max(samples),
            "stddev_ms": statistics.stdev(samples) if len(samples) > 1 else 0.0,
            "rounds": len(samples), "samples_ms": samples[:MAX_SAMPLES]}


def baseline_id(path: str | os.PathLike) -> str | None:
    """A short hash of a baseline file's contents (a changed baseline gets a new id); None when it is absent."""
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def append_entries(path: str | os.PathLike, entries: Iterable[dict]) -> int:
    """Append `entries` to the JSONL history at `path` atomically; returns how many were appended.

    Concurrent appenders are serialized with a lock file; the new file is written to a temporary file in the
    same directory and moved over the old one, so a crash never leaves a half-written history.
    """
    path = Path(path)
    lines = [json.dumps(e, sort_keys=True, allow_nan=False) + "\n" for e in entries]
    with locked(path):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(path, old + "".join(lines).encode())
    return len(lines)


def load_history(path: str | os.PathLike) -> list[dict]:
    """All entries of a JSONL history (blank lines skipped). A corrupt line raises naming its line number."""
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number} is not valid JSON ({exc.msg}); fix or delete that line.") from None
        entries.append(_migrate(entry, f"{path}:{number}"))
    return entries


# History lines written before the one judge used the nightly's own verdict words.
_OLD_VERDICTS = {"regressed": REGRESSION, "unchanged": PASS, "improved": INCONCLUSIVE}


def _migrate(entry, where: str) -> dict:
    """Validate one history line; older lines are migrated (verdict words; median from samples when missing)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("benchmark"), str) or "date" not in entry:
        raise ValueError(f"{where} is not a history entry (needs 'date' and 'benchmark'). Fix: delete that line.")
    if entry.get("verdict") in _OLD_VERDICTS:
        entry["verdict"] = _OLD_VERDICTS[entry["verdict"]]
    median = entry.get("median_ms")
    if median is None and entry.get("samples_ms"):
        entry["median_ms"] = median = statistics.median(entry["samples_ms"])
    if isinstance(median, bool) or not isinstance(median, (int, float)) or not math.isfinite(median) or median <= 0:
        raise ValueError(f"{where}: median_ms = {median!r} is not a finite number > 0 and the line has no samples "
                         "to recompute it from. Fix: delete that line (the nightly re-appends records it can read).")
    return entry


def nightly_series(entries: Iterable[dict], benchmark: str) -> list[dict]:
    """One point per nightly date for `benchmark`, in date order: the median over that night's attempts.

    Each point: date, median_ms, iqr_ms, torch (version), baseline_id, verdicts (one per attempt), attempts.
    """
    by_date: dict[str, list[dict]] = {}
    for e in entries:
        if e["benchmark"] == benchmark:
            by_date.setdefault(e["date"], []).append(e)
    points = []
    for date in sorted(by_date):
        runs = sorted(by_date[date], key=lambda e: (e.get("attempt", 1), e.get("timestamp", "")))
        points.append({"date": date, "median_ms": statistics.median(r["median_ms"] for r in runs),
                       "iqr_ms": statistics.median(r.get("iqr_ms", 0.0) for r in runs),
                       "torch": (runs[-1].get("versions") or {}).get("torch"),
                       "baseline_id": runs[-1].get("baseline_id"), "verdicts": [r.get("verdict") for r in runs],
                       "attempts": len(runs)})
    return points


def benchmarks(entries: Iterable[dict]) -> list[str]:
    """Sorted names of all benchmarks in the history."""
    return sorted({e["benchmark"] for e in entries})


def _verdict(bench: dict, baseline: dict | None, current_fp: dict) -> dict:
    tier = (bench.get("extra_info") or {}).get("verdict")
    if isinstance(tier, dict) and tier.get("outcome") in (PASS, REGRESSION, INCONCLUSIVE):
        base, cur = tier.get("baseline_median_ms"), tier.get("current_median_ms")
        return {"verdict": tier["outcome"], "ratio": cur / base if base and cur else None,
                "reason": f"perf tier: {tier['outcome']} (decided by {tier.get('decided_by', '?')} timings)",
                "baseline_median_ms": base}
    from fluxperf.bench.judge import compare_one

    comparison = compare_one(bench, baseline, current_fp=current_fp) if baseline else None
    if comparison is None:
        return {"verdict": None, "ratio": None, "reason": "no baseline for this benchmark"}
    return {"verdict": comparison.outcome, "ratio": comparison.current_median_ms / comparison.baseline_median_ms,
            "reason": comparison.deciding()[0].reason, "baseline_median_ms": comparison.baseline_median_ms}


def _gpu_slug(machine: dict) -> str:
    gpu = machine.get("gpu")
    if isinstance(gpu, dict):
        return gpu.get("slug") or gpu.get("name") or "unknown"
    return gpu if isinstance(gpu, str) and gpu else "unknown"


def _installed_versions() -> dict:
    from fluxperf.env import dist_version

    return {name: dist_version(name) for name in ("torch", "torchao", "triton", "diffusers")}


def _check_date(date: str) -> None:
    try:
        dt.date.fromisoformat(date)
    except (TypeError, ValueError):
        raise ValueError(f"date={date!r} is not YYYY-MM-DD; pass the nightly's date, e.g. 2026-11-22.") from None
