"""Per-hardware baselines, write side: `fluxperf baseline update|remove`, the only ways a baseline changes.

One update is one atomic step, also under concurrency and SIGKILL:
1. take baselines/<slug>/.0001_baseline.json.lock (filelock; two groups finishing at once are serialized and
   merged: neither update is lost), remove temp files a killed writer left behind;
2. read and validate the current baseline *under the lock* and merge the new runs into it;
3. write the kernel tables under content-addressed names (kernels/<benchmark>.<hash>.csv) — new files, so the
   old baseline still points at its own tables;
4. replace 0001_baseline.json atomically (temp file, fsync, os.replace): this is the commit point; the JSON names
   its tables in `fluxperf.kernel_tables`;
5. delete tables no longer referenced.
A kill before 4 leaves the old JSON with its old tables (plus unreferenced new files, cleaned by the next update).

Runs are validated field by field first; a record that cannot be a baseline (throttled GPU, calibration drift over
calibration.MAX_DRIFT, the test-only injected slowdown) is refused by name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import statistics
from pathlib import Path

from fluxperf.bench import stats, validate
from fluxperf.bench.baseline import (
    BASELINE_NAME,
    FORMAT,
    baseline_path,
    benchmarks_by_name,
    load_baseline,
    load_run,
    read_json,
    run_slug,
    safe_name,
)
from fluxperf.errors import BaselineError
from fluxperf.io import atomic_write_text, locked, stale_temp_files

COMPILE_FLOOR, COMPILE_CAP = 0.20, 0.60  # compile seconds are single samples with large run-to-run spread
# A baseline record needs enough rounds that a comparison against it can ever reach the significance level:
# with n rounds on both sides the smallest one-sided Mann-Whitney p is 1 / C(2n, n); 7 rounds give 2.9e-4 < 0.002,
# 5 give 4.0e-3 (never significant: every slowdown would be "inconclusive").
MIN_ROUNDS = next(n for n in range(2, 50) if stats.min_p_value(n, n) < stats.ALPHA / 2)


def build_baseline(runs: list[tuple[str, dict]], *, command: str, previous: dict | None = None) -> tuple[dict, dict]:
    """Merge pytest-benchmark runs (same GPU) into a baseline; returns (baseline, kernel tables by benchmark).

    Args:
        runs: (source name, run JSON) pairs. Several runs of the same benchmark (repeated same-code runs,
            ideally on more than one machine) set its threshold from the spread of their medians.
        command: the command line that produced the update (provenance).
        previous: the current baseline; its benchmarks absent from `runs` are kept.

    Raises:
        BaselineError: no runs, runs from different GPUs, or a record that is not a valid measurement.
    """
    if not runs:
        raise BaselineError("no runs given. Fix: pass the --benchmark-json files of one or more perf runs.")
    slugs = {run_slug(run, src) for src, run in runs}
    if len(slugs) != 1:
        raise BaselineError(f"runs come from different GPUs {sorted(slugs)}: a baseline holds one GPU. "
                            "Fix: update each GPU's baseline from its own runs.")
    slug = slugs.pop()
    _refuse_invalid(runs)
    grouped: dict[str, list[dict]] = {}
    for _, run in runs:
        for bench in run.get("benchmarks", []):
            grouped.setdefault(bench["fullname"], []).append(bench)
    meta = (previous or {}).get("fluxperf") or {}
    merged = benchmarks_by_name(previous) if previous else {}
    thresholds = dict(meta.get("thresholds") or {})
    tables = dict(meta.get("kernel_tables") or {})
    kernels = {}
    for name, benches in grouped.items():
        ref = _reference(benches)
        table = ref.get("extra_info", {}).pop("kernel_table", None)
        for b in benches:
            b.get("extra_info", {}).pop("kernel_table", None)
        if table:
            kernels[name] = table
        tables.pop(name, None)  # a re-measured benchmark keeps no stale table
        merged[name] = ref
        thresholds[name] = derive_thresholds(benches)
    last = runs[-1][1]
    baseline = {
        "machine_info": last.get("machine_info", {}), "commit_info": last.get("commit_info", {}),
        "benchmarks": [merged[k] for k in sorted(merged)], "datetime": _now(), "version": last.get("version"),
        "fluxperf": {"format": FORMAT, "gpu_slug": slug, "thresholds": thresholds, "kernel_tables": tables,
                     "provenance": provenance(command, [src for src, _ in runs], last)},
    }
    return baseline, kernels


def _refuse_invalid(runs: list[tuple[str, dict]]) -> None:
    empty = [src for src, run in runs if not run.get("benchmarks")]
    if empty:
        raise BaselineError(f"{', '.join(empty)}: no benchmark records (nothing was measured), so nothing can become "
                            "a baseline. Fix: pass the --benchmark-json of a perf run whose benchmarks ran.")
    bad = [f"{src}: {b['fullname']!r}: {why}" for src, run in runs for b in run.get("benchmarks", [])
           if (why := validate.invalid_measurement(b))]
    bad += [f"{src}: {b['fullname']!r}: {len(b['stats']['data'])} rounds < {MIN_ROUNDS} (a comparison against it could "
            "never be significant)" for src, run in runs for b in run.get("benchmarks", [])
            if len(b["stats"]["data"]) < MIN_ROUNDS]
    if bad:
        raise BaselineError("runs hold records that cannot be a baseline: " + "; ".join(bad) +
                            ". Fix: re-run those benchmarks on a healthy GPU without FLUXPERF_INJECT_SLOWDOWN.")


def _reference(benches: list[dict]) -> dict:
    """The run whose median is the median of the runs' medians (robust choice among repeated runs)."""
    ordered = sorted(benches, key=lambda b: statistics.median(b["stats"]["data"]))
    return ordered[(len(ordered) - 1) // 2]


def derive_thresholds(benches: list[dict]) -> dict:
    """Thresholds of one benchmark from its repeated runs: time from within- and across-run noise, compile times."""
    medians = [statistics.median(b["stats"]["data"]) for b in benches]
    within = max(stats.relative_median_error(b["stats"]["data"]) for b in benches)
    across = stats.spread_of_medians(medians)
    out = {"time": stats.noise_threshold(max(within, across)), "noise_within": within, "noise_across": across,
           "runs": len(benches), "floor": stats.FLOOR, "cap": stats.CAP}
    for key in ("compile_cold_s", "compile_warm_s"):
        values = [v for b in benches if (v := (b.get("extra_info", {}).get("metrics") or {}).get(key))]
        noise = stats.spread_of_medians(values) if len(values) > 1 else 0.0
        out[key] = stats.noise_threshold(noise, floor=COMPILE_FLOOR, cap=COMPILE_CAP)
    return out


def provenance(command: str, sources: list[str], run: dict) -> dict:
    from fluxperf.env import git_commit

    fp = (run.get("machine_info") or {}).get("fluxperf") or {}
    return {"git_commit": git_commit(), "run_commit": (run.get("commit_info") or {}).get("id"), "date": _now(),
            "versions": fp.get("versions"), "gpu": fp.get("gpu"), "command": command, "sources": sources}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- writing ---------------------------------------------------------------------------------------------
def write_baseline(baseline: dict, path: str | Path, kernel_tables: dict | None = None) -> list[Path]:
    """Write the kernel tables (new content-addressed files), then the JSON (the commit point), then drop
    tables no longer referenced. The caller holds the directory's lock. Returns the paths written."""
    import pandas as pd

    from fluxperf.bench.kernels import save_kernel_table

    path = Path(path)
    refs = baseline["fluxperf"].setdefault("kernel_tables", {})
    written = []
    for name, records in (kernel_tables or {}).items():
        csv = pd.DataFrame.from_records(records).to_csv(index=False)
        rel = f"kernels/{safe_name(name)}.{hashlib.sha256(csv.encode()).hexdigest()[:10]}.csv"
        written.append(save_kernel_table(pd.DataFrame.from_records(records), path.parent / rel))
        refs[name] = rel
    for bench in baseline["benchmarks"]:  # adopt tables of baselines written before kernel_tables existed
        legacy = f"kernels/{safe_name(bench['fullname'])}.csv"
        if bench["fullname"] not in refs and (path.parent / legacy).exists():
            refs[bench["fullname"]] = legacy
    validate.check_baseline(baseline, path)  # never write what load_baseline would refuse
    atomic_write_text(path, json.dumps(baseline, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")
    keep = {(path.parent / r).resolve() for r in refs.values()}
    for old in sorted((path.parent / "kernels").glob("*.csv")):
        if old.resolve() not in keep:
            old.unlink()
    return [path, *written]


def update_baseline(run_files: list[str | Path], *, root: str | Path | None = None, command: str) -> list[Path]:
    """Validate run JSONs and merge them into baselines/<slug>/0001_baseline.json under the directory's lock.

    Returns the paths written. Raises BaselineError (exit 12) for an invalid run or baseline.
    """
    runs = [(Path(f).name, load_run(f)) for f in run_files]
    if not runs:
        raise BaselineError("no runs given. Fix: pass the --benchmark-json files of one or more perf runs.")
    slug = run_slug(runs[0][1], runs[0][0])
    path = baseline_path(slug, root)
    with locked(path):
        for stale in stale_temp_files(path.parent):
            stale.unlink()
        previous = load_baseline(path, expected_slug=slug) if path.exists() else None
        baseline, kernels = build_baseline(runs, command=command, previous=previous)
        return write_baseline(baseline, path, kernels)


def remove_benchmarks(slug: str, names: list[str], *, root: str | Path | None = None, command: str) -> list[Path]:
    """Drop benchmarks (and their kernel tables) from a baseline, e.g. an invalid record that cannot be re-recorded.

    The file may be invalid only because of the records being removed; everything else is validated.
    """
    path = baseline_path(slug, root)
    if not path.exists():
        raise BaselineError(f"no baseline at {path}. Fix: check --gpu (the GPU slug) and --root.")
    with locked(path):
        data = read_json(path, "baseline", f"restore it from git (git checkout -- {path})")
        validate.mapping(data, path, "")
        if not isinstance(data.get("benchmarks"), list) or not isinstance(data.get("fluxperf"), dict):
            raise validate.fail(path, "benchmarks/fluxperf", "(missing)", "are not a list and an object")
        names = list(dict.fromkeys(names))
        have = [b.get("fullname") for b in data.get("benchmarks", []) if isinstance(b, dict)]
        unknown = [n for n in names if n not in have]
        if unknown:
            raise BaselineError(f"{path}: no benchmarks {unknown} (it holds {have}). Fix: copy the full node id.")
        data["benchmarks"] = [b for b in data["benchmarks"] if b.get("fullname") not in names]
        meta = data.setdefault("fluxperf", {})
        for section in ("thresholds", "kernel_tables"):
            for n in names:
                (meta.get(section) or {}).pop(n, None)
        meta.setdefault("removed", []).append({"benchmarks": names, "date": _now(), "command": command})
        return write_baseline(data, path)


__all__ = ["BASELINE_NAME", "build_baseline", "derive_thresholds", "remove_benchmarks", "update_baseline",
           "write_baseline"]
