"""Field-by-field validation of everything the judge reads: baselines, run JSONs, thresholds, calibration.

Every number is read through `number()`, which refuses booleans (JSON `true` is a Python int), NaN and
±Infinity (Python's json module accepts them) and values outside the field's range; every error names the file,
the key path, the value, the rule and the fix, and is a `BaselineError` (exit status 12 where the judge stops).

Ranges and why:
* samples (stats.data, seconds): finite, > 0 and at most a day (1e308 s is finite but inf in ms).
* thresholds.time: within [TIME_MIN, stats.CAP] — a larger one (e.g. 5.0) would let a +50 % slowdown pass, and
  derive_thresholds never writes more than the cap (10 %).
* thresholds.compile_*: within (0, 1]: compile seconds are single samples with +-60 % spread at most.
* calibration kernels: {"ms": finite > 0}; `before` and `after` both present when either is.
* extra_info fields compare.py does arithmetic on (proxies, compile seconds, SM clock) are numbers; throttle
  reasons a list of strings; a kernel table a list of records; the run's `fluxperf.selected` a list of ids.

Example:
    >>> number(0.03, "b.json", "thresholds.t.time", lo=0.001, hi=0.1)
    0.03
    >>> number(True, "b.json", "k", lo=0, hi=1)
    Traceback (most recent call last):
    ...
    fluxperf.errors.BaselineError: b.json: k = True is not a number (a boolean). Fix: restore the file from git or recreate it (scripts/tiers/perf-tier.sh GROUP --baseline).
"""

from __future__ import annotations

import math

from fluxperf.bench import calibration as cal
from fluxperf.bench import stats
from fluxperf.bench.kernels import COLUMNS as KERNEL_COLUMNS
from fluxperf.errors import BaselineError

FORMAT = 1
TIME_MIN = 0.001
SAMPLE_MAX_S = 86400.0  # one round longer than a day is no measurement (and 1e308 s overflows to inf in ms)
CALIBRATION_MAX_MS = 3.6e6  # an hour per calibration kernel: far beyond any GPU (1e308 overflows the speed factor)
DEFAULT_FIX = "restore the file from git or recreate it (scripts/tiers/perf-tier.sh GROUP --baseline)"
EXACT_PROXY_KEYS = ("kernels_per_step", "graph_breaks", "recompiles", "unique_graphs", "cached_steps")
# fields compare.py does arithmetic on: numbers, never strings, lists or objects
NUMERIC_EXTRA = {"proxies": (*EXACT_PROXY_KEYS, "peak_mem_gib"), "metrics": ("compile_cold_s", "compile_warm_s")}


def fail(source, key: str, value, rule: str, fix: str = DEFAULT_FIX) -> BaselineError:
    where = f"{key} = {value!r}" if key else repr(value)
    return BaselineError(f"{source}: {where} {rule}. Fix: {fix}.")


def number(value, source, key: str, *, lo: float, hi: float = math.inf, lo_open: bool = False,
           integer: bool = False, fix: str = DEFAULT_FIX) -> float:
    """`value` as a float if it is a real, finite number in [lo, hi] (or (lo, hi] with lo_open); else BaselineError."""
    if isinstance(value, bool):
        raise fail(source, key, value, "is not a number (a boolean)", fix)
    if not isinstance(value, (int, float)):
        raise fail(source, key, value, f"is not a number ({type(value).__name__})", fix)
    if isinstance(value, int) and abs(value) > 2**1023:  # beyond a float: math.isfinite itself would overflow
        raise fail(source, key, f"{str(value)[:12]}... ({len(str(value))} digits)", "is not finite as a float", fix)
    if not math.isfinite(value):
        raise fail(source, key, value, "is not finite", fix)
    if integer and value != int(value):
        raise fail(source, key, value, "is not a whole number", fix)
    if value < lo or (lo_open and value == lo) or value > hi:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise fail(source, key, value, f"is outside {interval}", fix)
    return float(value)


def mapping(value, source, key: str, *, fix: str = DEFAULT_FIX) -> dict:
    if not isinstance(value, dict):
        raise fail(source, key, value if not isinstance(value, (list, str)) else type(value).__name__,
                   "is not an object", fix)
    return value


def text(value, source, key: str, *, fix: str = DEFAULT_FIX) -> str:
    if not isinstance(value, str) or not value:
        raise fail(source, key, value, "is not a non-empty string", fix)
    return value


# -- one benchmark record -----------------------------------------------------------------------------------
def check_benchmark(bench, source, index: int, *, fix: str = DEFAULT_FIX) -> str:
    """Validate one pytest-benchmark entry (fullname, stats.data, extra_info); returns its fullname."""
    key = f"benchmarks[{index}]"
    mapping(bench, source, key, fix=fix)
    name = text(bench.get("fullname"), source, f"{key}.fullname", fix=fix)
    key = f"benchmarks[{name}]"
    data = mapping(bench.get("stats"), source, f"{key}.stats", fix=fix).get("data")
    if not isinstance(data, list) or not data:
        raise fail(source, f"{key}.stats.data", data, "is not a non-empty list of per-round seconds", fix)
    for i, x in enumerate(data):
        number(x, source, f"{key}.stats.data[{i}]", lo=0, hi=SAMPLE_MAX_S, lo_open=True, fix=fix)
    extra = bench.get("extra_info")
    if extra is not None:
        check_extra_info(mapping(extra, source, f"{key}.extra_info", fix=fix), source, f"{key}.extra_info", fix=fix)
    return name


def check_extra_info(extra: dict, source, key: str, *, fix: str = DEFAULT_FIX) -> None:
    if "calibration" in extra and extra["calibration"] is not None:
        check_calibration(extra["calibration"], source, f"{key}.calibration", fix=fix)
    monitor = extra.get("monitor")
    if monitor is not None:
        verdict = mapping(monitor, source, f"{key}.monitor", fix=fix).get("verdict")
        if verdict is not None:
            throttled = mapping(verdict, source, f"{key}.monitor.verdict", fix=fix).get("throttled")
            if not isinstance(throttled, bool):
                raise fail(source, f"{key}.monitor.verdict.throttled", throttled, "is not true or false", fix)
            reasons = verdict.get("reasons")
            if reasons is not None and not (isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)):
                raise fail(source, f"{key}.monitor.verdict.reasons", reasons, "is not a list of strings", fix)
        clock = monitor.get("sm_clock_mhz")
        if clock is not None and mapping(clock, source, f"{key}.monitor.sm_clock_mhz", fix=fix).get("median") is not None:
            number(clock["median"], source, f"{key}.monitor.sm_clock_mhz.median", lo=0, fix=fix)
    for section in ("metrics", "proxies"):
        values = extra.get(section)
        if values is None:
            continue
        for name, v in mapping(values, source, f"{key}.{section}", fix=fix).items():
            if v is not None and (name in NUMERIC_EXTRA[section] or not isinstance(v, (dict, list, str))):
                number(v, source, f"{key}.{section}.{name}", lo=0, integer=name in EXACT_PROXY_KEYS, fix=fix)
    table = extra.get("kernel_table")
    if table is not None and not (isinstance(table, list) and all(
            isinstance(r, dict) and set(KERNEL_COLUMNS) <= set(r) for r in table)):
        raise fail(source, f"{key}.kernel_table", type(table).__name__ if isinstance(table, (dict, list)) else table,
                   f"is not a list of kernel records with {', '.join(KERNEL_COLUMNS)}", fix)


def check_calibration(calibration, source, key: str, *, fix: str = DEFAULT_FIX) -> None:
    """{"before": {kernel: {"ms": > 0}}, "after": {...}}: both sides, every kernel's ms finite and > 0."""
    mapping(calibration, source, key, fix=fix)
    for side in ("before", "after"):
        kernels = mapping(calibration.get(side), source, f"{key}.{side}", fix=fix)
        for kernel, entry in kernels.items():
            ms = mapping(entry, source, f"{key}.{side}.{kernel}", fix=fix).get("ms")
            number(ms, source, f"{key}.{side}.{kernel}.ms", lo=0, hi=CALIBRATION_MAX_MS, lo_open=True, fix=fix)


def invalid_measurement(bench: dict) -> str | None:
    """Why a (validated) record cannot serve as a baseline: throttled, drifting calibration, injected slowdown."""
    extra = bench.get("extra_info") or {}
    why = []
    if (extra.get("monitor") or {}).get("verdict", {}).get("throttled"):
        why.append("the GPU throttled (" + ", ".join(extra["monitor"]["verdict"].get("reasons") or []) + ")")
    calib = extra.get("calibration") or {}
    if calib.get("before") and calib.get("after"):
        d = cal.drift(calib["before"], calib["after"])
        if d > cal.MAX_DRIFT:
            why.append(f"calibration drift {d:.1%} > {cal.MAX_DRIFT:.0%}")
    if extra.get("slowdown_injected"):
        why.append(f"FLUXPERF_INJECT_SLOWDOWN={extra['slowdown_injected']} (test-only slowdown)")
    return "; ".join(why) or None


# -- thresholds and whole files ------------------------------------------------------------------------------
def check_thresholds(thresholds, source, key: str = "fluxperf.thresholds", *, fix: str = DEFAULT_FIX) -> dict:
    for name, th in mapping(thresholds, source, key, fix=fix).items():
        k = f"{key}[{name}]"
        mapping(th, source, k, fix=fix)
        number(th.get("time"), source, f"{k}.time", lo=TIME_MIN, hi=stats.CAP, fix=fix)
        for field in ("compile_cold_s", "compile_warm_s"):
            if th.get(field) is not None:
                number(th[field], source, f"{k}.{field}", lo=0, hi=1.0, lo_open=True, fix=fix)
        for field in ("noise_within", "noise_across"):
            if th.get(field) is not None:
                number(th[field], source, f"{k}.{field}", lo=0, fix=fix)
        if th.get("runs") is not None:
            number(th["runs"], source, f"{k}.runs", lo=1, integer=True, fix=fix)
    return thresholds


def check_machine_info(machine_info, source, slug: str | None, *, fix: str = DEFAULT_FIX) -> None:
    """machine_info.fluxperf names the same GPU as `slug` (a relabelled file is refused)."""
    from fluxperf.env import gpu_slug

    fp = mapping(mapping(machine_info, source, "machine_info", fix=fix).get("fluxperf"), source,
                 "machine_info.fluxperf", fix=fix)
    recorded = text(fp.get("slug"), source, "machine_info.fluxperf.slug", fix=fix)
    if fp.get("versions") is not None:
        mapping(fp["versions"], source, "machine_info.fluxperf.versions", fix=fix)
    gpu = fp.get("gpu")
    if gpu is not None:
        name = text(mapping(gpu, source, "machine_info.fluxperf.gpu", fix=fix).get("name"), source,
                    "machine_info.fluxperf.gpu.name", fix=fix)
        if gpu_slug(name) != recorded:
            raise fail(source, "machine_info.fluxperf.slug", recorded, f"does not match the recorded GPU name {name!r}",
                       fix)
    if slug is not None and recorded != slug:
        raise fail(source, "machine_info.fluxperf.slug", recorded,
                   f"differs from fluxperf.gpu_slug {slug!r}: the file was relabelled or merged from another GPU", fix)


def check_baseline(data, source) -> dict:
    """Validate a whole baseline document; returns it. Raises BaselineError naming file, key, value and fix."""
    mapping(data, source, "")
    meta = mapping(data.get("fluxperf"), source, "fluxperf")
    if isinstance(meta.get("format"), bool) or meta.get("format") != FORMAT:
        raise fail(source, "fluxperf.format", meta.get("format"), f"is not {FORMAT} (this fluxperf's format)")
    slug = text(meta.get("gpu_slug"), source, "fluxperf.gpu_slug")
    check_machine_info(data.get("machine_info"), source, slug)
    benches = data.get("benchmarks")
    if not isinstance(benches, list):
        raise fail(source, "benchmarks", type(benches).__name__, "is not a list")
    names = [check_benchmark(b, source, i) for i, b in enumerate(benches)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise fail(source, "benchmarks", dupes, "appear more than once")
    thresholds = check_thresholds(_absent_is_empty(meta, "thresholds"), source)
    tables = mapping(_absent_is_empty(meta, "kernel_tables"), source, "fluxperf.kernel_tables")
    if meta.get("provenance") is not None:
        mapping(meta["provenance"], source, "fluxperf.provenance")
    if meta.get("removed") is not None and not isinstance(meta["removed"], list):
        raise fail(source, "fluxperf.removed", meta["removed"], "is not a list")
    for name, rel in tables.items():
        if not isinstance(rel, str) or not rel.startswith("kernels/") or ".." in rel or not rel.endswith(".csv"):
            raise fail(source, f"fluxperf.kernel_tables[{name}]", rel, "is not a kernels/*.csv path inside the folder")
    unknown = sorted((set(thresholds) | set(tables)) - set(names))
    if unknown:
        raise fail(source, "fluxperf.thresholds/kernel_tables", unknown, "name benchmarks the file does not hold")
    for b in benches:
        why = invalid_measurement(b)
        if why:
            raise fail(source, f"benchmarks[{b['fullname']}]", "(record)", f"is not a valid measurement: {why}",
                       f"re-record it, or drop it: fluxperf baseline remove --gpu {slug} '{b['fullname']}'")
    return data


def _absent_is_empty(meta: dict, key: str):
    """meta[key], or {} when absent/null; a falsy value of another type ([], 0, "") stays, so it is refused."""
    value = meta.get(key)
    return {} if value is None else value


def check_run(doc, source) -> dict:
    """Validate a pytest --benchmark-json run (every benchmark's fullname and samples, our machine info)."""
    fix = "pass a file written by `pytest -m gpu perf --benchmark-json=FILE` with the fluxperf plugin active"
    mapping(doc, source, "", fix=fix)
    benches = doc.get("benchmarks")
    if not isinstance(benches, list):
        raise fail(source, "benchmarks", type(benches).__name__, "is not a list", fix)
    for i, b in enumerate(benches):
        check_benchmark(b, source, i, fix=fix)
    check_machine_info(doc.get("machine_info"), source, None, fix=fix)
    meta = doc.get("fluxperf")
    if meta is not None:
        selected = mapping(meta, source, "fluxperf", fix=fix).get("selected")
        if selected is not None and not (isinstance(selected, list) and all(isinstance(n, str) and n for n in selected)):
            raise fail(source, "fluxperf.selected", selected, "is not a list of benchmark node ids", fix)
    return doc
