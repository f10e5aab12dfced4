"""Per-hardware baselines: baselines/<gpu-slug>/0001_baseline.json, changed only by `fluxperf baseline update`.

The file is a pytest-benchmark run JSON (machine_info, commit_info, benchmarks with per-round samples in
stats.data), so `--benchmark-compare` and `--benchmark-compare-fail` read it as they read any stored run,
plus a "fluxperf" section: format, GPU slug, per-benchmark thresholds derived from measured noise, and
provenance (git commit, date, versions, command, source runs). Kernel tables (one per benchmark, when the
run profiled them) go to baselines/<gpu-slug>/kernels/<benchmark>.csv.

Rules: every write is atomic (temp file in the same directory, fsync, os.replace: an interrupted update
leaves the old baseline intact); a corrupt file, or one recorded on a different GPU, raises BaselineError.

Example:
    >>> baseline_path("nvidia-h100-80gb-hbm3", "baselines").as_posix()
    'baselines/nvidia-h100-80gb-hbm3/0001_baseline.json'
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
from pathlib import Path

from ..errors import BaselineError
from ..io import atomic_write_text
from . import stats

FORMAT = 1
BASELINE_NAME = "0001_baseline.json"  # pytest-benchmark's compare glob is NNNN_*.json
GPU_ENV = "FLUXPERF_GPU_NAME"  # test-only override of the detected GPU name
ROOT_ENV = "FLUXPERF_BASELINES"
CREATE_COMMAND = "scripts/perf-tier.sh all --baseline"
COMPILE_FLOOR, COMPILE_CAP = 0.20, 0.60  # compile seconds are single samples with large run-to-run spread


def default_root() -> Path:
    """$FLUXPERF_BASELINES, else ./baselines."""
    return Path(os.environ.get(ROOT_ENV) or "baselines")


def baseline_path(slug: str, root: str | Path | None = None) -> Path:
    return Path(root if root is not None else default_root()) / slug / BASELINE_NAME


def detect_gpu_name() -> str | None:
    """Name of GPU 0 from $FLUXPERF_GPU_NAME or NVML (no torch, no CUDA context); None without a GPU."""
    name = os.environ.get(GPU_ENV)
    if name:
        return name
    from ..optional import find_module

    if not find_module("pynvml"):
        return None
    import pynvml

    try:
        pynvml.nvmlInit()
        raw = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    except pynvml.NVMLError:  # no driver or no GPU: this is a CPU machine
        return None
    return raw.decode() if isinstance(raw, bytes) else raw


def machine_fingerprint() -> dict:
    """GPU (name, capability, driver, CUDA, slug) and software versions (torch, torchao, diffusers, FA3, cache-dit)."""
    from ..env import driver_version, gpu_info, gpu_slug, versions

    override = os.environ.get(GPU_ENV)
    gpu = {"name": override, "slug": gpu_slug(override), "driver": driver_version()} if override else gpu_info()
    return {"gpu": gpu, "slug": gpu["slug"] if gpu else "cpu", "versions": versions(), "host": platform.node()}


def run_slug(run: dict, source: str = "run") -> str:
    """The GPU slug a pytest-benchmark run JSON was recorded on (from our machine-info hook)."""
    try:
        return run["machine_info"]["fluxperf"]["slug"]
    except (KeyError, TypeError):
        raise BaselineError(
            f"{source}: machine_info.fluxperf.slug is missing, so the GPU it ran on is unknown. Fix: record runs "
            "with the fluxperf pytest plugin active (root conftest) and --benchmark-json."
        ) from None


def load_baseline(path: str | Path, *, expected_slug: str | None = None) -> dict:
    """Read and validate a baseline file.

    Raises:
        BaselineError: unreadable or corrupt JSON, missing sections, or recorded on a GPU other than expected_slug.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"baseline {path} is unreadable or corrupt ({exc}). Fix: restore it from git "
                            f"(git checkout -- {path}) or recreate it: {CREATE_COMMAND}") from exc
    _validate(data, path)
    slug = data["fluxperf"]["gpu_slug"]
    if expected_slug is not None and slug != expected_slug:
        raise BaselineError(
            f"baseline {path} was recorded on GPU {slug!r} but this run is on {expected_slug!r}: timings from "
            f"different hardware are not comparable. Fix: move it to baselines/{slug}/, or create one for this GPU: "
            f"{CREATE_COMMAND}")
    return data


def _validate(data, path: Path) -> None:
    def bad(what: str):
        return BaselineError(f"baseline {path} is corrupt: {what}. Fix: restore it from git or recreate it: "
                             f"{CREATE_COMMAND}")

    if not isinstance(data, dict):
        raise bad(f"top level is {type(data).__name__}, not an object")
    meta = data.get("fluxperf")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("gpu_slug"):
        raise bad(f'"fluxperf" section missing or not format {FORMAT} with a gpu_slug')
    benches = data.get("benchmarks")
    if not isinstance(benches, list):
        raise bad('"benchmarks" is not a list')
    for i, b in enumerate(benches):
        data_ms = (b.get("stats") or {}).get("data") if isinstance(b, dict) else None
        if not isinstance(b, dict) or not b.get("fullname") or not isinstance(data_ms, list) or not data_ms:
            raise bad(f"benchmark #{i} lacks fullname or per-round samples (stats.data)")
        if not all(isinstance(x, (int, float)) and x > 0 for x in data_ms):
            raise bad(f"benchmark {b['fullname']!r} has non-positive or non-numeric samples")


def benchmarks_by_name(data: dict) -> dict[str, dict]:
    return {b["fullname"]: b for b in data.get("benchmarks", [])}


# -- building --------------------------------------------------------------------------------------------
def build_baseline(runs: list[tuple[str, dict]], *, command: str, previous: dict | None = None) -> tuple[dict, dict]:
    """Merge pytest-benchmark runs (same GPU) into a baseline; returns (baseline, kernel tables by benchmark).

    Args:
        runs: (source name, run JSON) pairs. Several runs of the same benchmark (repeated same-code runs,
            ideally on more than one machine) set its threshold from the spread of their medians.
        command: the command line that produced the update (provenance).
        previous: the current baseline; its benchmarks absent from `runs` are kept.
    """
    if not runs:
        raise BaselineError("no runs given. Fix: pass the --benchmark-json files of one or more perf runs.")
    slugs = {run_slug(run, src) for src, run in runs}
    if len(slugs) != 1:
        raise BaselineError(f"runs come from different GPUs {sorted(slugs)}: a baseline holds one GPU. "
                            "Fix: update each GPU's baseline from its own runs.")
    slug = slugs.pop()
    _refuse_injected(runs)
    grouped: dict[str, list[dict]] = {}
    for _, run in runs:
        for bench in run.get("benchmarks", []):
            grouped.setdefault(bench["fullname"], []).append(bench)
    merged = dict(benchmarks_by_name(previous)) if previous else {}
    thresholds = dict(previous["fluxperf"].get("thresholds", {})) if previous else {}
    kernels = {}
    for name, benches in grouped.items():
        ref = _reference(benches)
        table = ref.get("extra_info", {}).pop("kernel_table", None)
        for b in benches:
            b.get("extra_info", {}).pop("kernel_table", None)
        if table:
            kernels[name] = table
        merged[name] = ref
        thresholds[name] = derive_thresholds(benches)
    last = runs[-1][1]
    baseline = {
        "machine_info": last.get("machine_info", {}), "commit_info": last.get("commit_info", {}),
        "benchmarks": [merged[k] for k in sorted(merged)], "datetime": _now(), "version": last.get("version"),
        "fluxperf": {"format": FORMAT, "gpu_slug": slug, "thresholds": thresholds,
                     "provenance": provenance(command, [src for src, _ in runs], last)},
    }
    return baseline, kernels


def _refuse_injected(runs: list[tuple[str, dict]]) -> None:
    for src, run in runs:
        for bench in run.get("benchmarks", []):
            fraction = (bench.get("extra_info") or {}).get("slowdown_injected")
            if fraction:
                raise BaselineError(
                    f"{src}: benchmark {bench['fullname']!r} ran with FLUXPERF_INJECT_SLOWDOWN={fraction} (the "
                    "test-only slowdown); it must never become a baseline. Fix: unset the variable and re-run.")


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
    from ..env import git_commit

    fp = (run.get("machine_info") or {}).get("fluxperf") or {}
    return {"git_commit": git_commit(), "run_commit": (run.get("commit_info") or {}).get("id"), "date": _now(),
            "versions": fp.get("versions"), "gpu": fp.get("gpu"), "command": command, "sources": sources}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- writing ---------------------------------------------------------------------------------------------
def write_baseline(baseline: dict, path: str | Path, kernel_tables: dict | None = None) -> list[Path]:
    """Write the baseline (and its kernel tables) atomically; returns the paths written."""
    path = Path(path)
    text = json.dumps(baseline, indent=2, sort_keys=False, default=str)
    written = []
    for name, records in (kernel_tables or {}).items():
        written.append(save_kernel_records(records, path.parent / "kernels", name))
    atomic_write_text(path, text + "\n")
    return [path, *written]


def update_baseline(run_files: list[str | Path], *, root: str | Path | None = None, command: str) -> list[Path]:
    """Read run JSONs, merge them into baselines/<slug>/0001_baseline.json (created if absent); return paths written."""
    runs = []
    for f in run_files:
        try:
            runs.append((Path(f).name, json.loads(Path(f).read_text(encoding="utf8"))))
        except (OSError, json.JSONDecodeError) as exc:
            raise BaselineError(f"run file {f} is unreadable ({exc}). Fix: pass a --benchmark-json output.") from exc
    slug = run_slug(runs[0][1], runs[0][0]) if runs else None
    path = baseline_path(slug, root) if slug else None
    previous = load_baseline(path, expected_slug=slug) if path and path.exists() else None
    baseline, kernels = build_baseline(runs, command=command, previous=previous)
    return write_baseline(baseline, baseline_path(baseline["fluxperf"]["gpu_slug"], root), kernels)


def save_kernel_records(records: list[dict], directory: Path, benchmark: str) -> Path:
    """Save one benchmark's kernel table (records of name, count, cuda_time_us) as CSV under `directory`.

    Uses fluxperf.nightly.kernels (its file naming and writer) when that module exists, else a plain atomic CSV.
    """
    import pandas as pd

    df = pd.DataFrame.from_records(records)
    if has_module("fluxperf.nightly.kernels"):
        from ..nightly.kernels import kernel_table_path, save_kernel_table

        path = kernel_table_path(directory, benchmark)
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(save_kernel_table(df, path))
    path = directory / f"{safe_name(benchmark)}.csv"
    atomic_write_text(path, df.to_csv(index=False))
    return path


def has_module(name: str) -> bool:
    """True if dotted module `name` can be found (a missing parent package counts as missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def safe_name(fullname: str) -> str:
    """'perf/test_ladder.py::test_transformer_step[bf16]' -> 'test_ladder.py-test_transformer_step-bf16'."""
    tail = fullname.split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tail).strip("-")
