"""pytest plugin: per-GPU baseline storage, GPU machine info, the decision rule's verdicts and exit statuses.

Loaded from the root conftest (`pytest_plugins = ["fluxperf.bench.pytest_plugin"]`). Importing it is cheap (no
torch, no CUDA), and it does nothing unless a --benchmark-{compare,save,autosave,json} option is given on a
machine with a GPU (NVML answers, or $FLUXPERF_GPU_NAME names one):

* before pytest-benchmark configures itself, --benchmark-storage (if left at its default) becomes
  baselines/<gpu-slug>/ and a bare --benchmark-compare means baselines/<gpu-slug>/0001_baseline.json;
* no baseline for this GPU: comparison is skipped with a message naming the command that creates one;
  a corrupt baseline, or one from another GPU, stops the run with exit status 12;
* --benchmark-save/--benchmark-autosave into baselines/ are refused (baselines change only through
  `fluxperf baseline update`);
* `pytest_benchmark_update_machine_info` adds GPU name, capability, driver, CUDA and the versions of torch,
  torchao, diffusers, FA3 and cache-dit;
* benchmarks report their verdicts with `judge()`; at the end the exit status is 0 (pass), 10 (regression) or
  11 (inconclusive) when the tests themselves passed. With --benchmark-compare-fail on the command line,
  pytest-benchmark's own check decides instead (verdicts are still printed).
* --perf-group NAME selects one group of the perf tier (see GROUPS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import EXIT_BASELINE_ERROR, EXIT_INCONCLUSIVE, EXIT_REGRESSION

DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's default --benchmark-storage

# Perf-tier groups: each runs cold in under 9 minutes on one H100 (see perf/README.md for the budgets).
GROUPS = {
    "base": "bf16 eager transformer step; VAE decode eager, compiled, compiled channels_last",
    "compile": "compile and fused_qkv rungs (regional compile, ~25 s each)",
    "attention": "channels_last and fa3_fp8 rungs",
    "float8": "float8 rung (torchao float8 + compile)",
    "flags": "flags rung: the full compile stack with the coordinate-descent inductor flags (~270 s compile)",
    "export": "export rung (torch.export + AOTInductor)",
    "e2e_compile": "end-to-end schnell, 4 steps with text encoders, compile rung",
    "e2e_full": "end-to-end schnell, 4 steps with text encoders, full stack (flags rung)",
    "dev_cache": "FLUX.1-dev 28-step image, compiled: uncached, cache-dit F1B0, first-block cache",
    "kontext": "FLUX.1 Kontext (twice the image tokens): transformer step and 28-step image, compiled",
}
_KEY = pytest.StashKey["FluxperfState"]()
_EXIT_BY_OUTCOME = {"regression": EXIT_REGRESSION, "inconclusive": EXIT_INCONCLUSIVE}


@dataclass
class FluxperfState:
    """What the plugin knows during a session (reachable from tests via state_of(config))."""

    active: bool = False
    gpu_name: str | None = None
    slug: str | None = None
    root: Path | None = None
    baseline: dict | None = None
    baseline_path: Path | None = None
    no_baseline_message: str | None = None
    compare_fail_override: bool = False
    kernel_tables: bool = False
    report_dir: str | None = None
    comparisons: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    outcome: str | None = None
    report_paths: dict = field(default_factory=dict)
    _fingerprint: dict | None = None

    def baseline_benchmark(self, fullname: str) -> dict | None:
        if not self.baseline:
            return None
        return next((b for b in self.baseline["benchmarks"] if b["fullname"] == fullname), None)

    def thresholds(self, fullname: str) -> dict:
        return ((self.baseline or {}).get("fluxperf", {}).get("thresholds") or {}).get(fullname, {})

    def baseline_fingerprint(self) -> dict:
        return (self.baseline or {}).get("machine_info", {}).get("fluxperf") or {}

    def current_fingerprint(self) -> dict:
        if self._fingerprint is None:
            from .baseline import machine_fingerprint

            self._fingerprint = machine_fingerprint()
        return self._fingerprint

    def note_missing(self, fullname: str) -> None:
        if self.baseline is not None:
            self.missing.append(fullname)


def state_of(config) -> FluxperfState:
    """The session's FluxperfState (a fresh inert one if the plugin did not configure this session)."""
    return config.stash.setdefault(_KEY, FluxperfState())


def record_comparison(config, comparison) -> None:
    state_of(config).comparisons.append(comparison)


def judge(config, current: dict, *, remeasure=None):
    """Compare a benchmark record with this GPU's baseline and record the verdict; None without a baseline.

    Args:
        config: the pytest config.
        current: {"fullname", "stats": {"data": per-round seconds}, "extra_info": {...}}.
        remeasure: optional callable returning a fresh record (same shape); called once when the first verdict
            is a regression or an invalid (throttled) measurement, and the second verdict decides.
    """
    from .compare import compare_records

    state = state_of(config)
    base = state.baseline_benchmark(current["fullname"])
    if base is None:
        state.note_missing(current["fullname"])
        return None
    kwargs = dict(thresholds=state.thresholds(current["fullname"]), current_fp=state.current_fingerprint(),
                  baseline_fp=state.baseline_fingerprint())
    verdict = compare_records(current, base, **kwargs)
    if remeasure is not None and (verdict.outcome == "regression" or verdict.invalid):
        second = remeasure()
        first = verdict
        verdict = compare_records(second, base, **kwargs)
        current.setdefault("extra_info", {})["remeasure"] = {"first": first.to_dict(),
                                                              "samples_s": list(second["stats"]["data"])}
    record_comparison(config, verdict)
    return verdict


# -- hooks -----------------------------------------------------------------------------------------------
def pytest_addoption(parser):
    group = parser.getgroup("fluxperf", "fluxperf benchmarks")
    group.addoption("--perf-group", action="append", default=[], metavar="NAME",
                    help=f"run only this perf-tier group (repeatable, or comma-separated): {', '.join(GROUPS)}")
    group.addoption("--fluxperf-baselines", default=None, metavar="DIR",
                    help="root of the per-GPU baselines (default: $FLUXPERF_BASELINES or <rootdir>/baselines)")
    group.addoption("--fluxperf-kernel-tables", action="store_true", default=False,
                    help="store a kernel table per benchmark in extra_info (for `fluxperf baseline update`)")
    group.addoption("--fluxperf-report", default=None, metavar="DIR",
                    help="write report.md, report.csv and report-ladder.png (current vs baseline) into DIR")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's (trylast) configure reads the storage option
def pytest_configure(config):
    config.addinivalue_line("markers", "perf_group(name): the perf-tier group a benchmark belongs to")
    state = state_of(config)
    state.kernel_tables = bool(config.getoption("fluxperf_kernel_tables"))
    state.report_dir = config.getoption("fluxperf_report")
    if not _benchmarks_requested(config):
        return
    from .baseline import detect_gpu_name

    name = detect_gpu_name()
    if not name:
        return
    _configure_storage(config, state, name)


def _benchmarks_requested(config) -> bool:
    opt = config.option
    return any(getattr(opt, k, None) for k in ("benchmark_compare", "benchmark_compare_fail", "benchmark_save",
                                                 "benchmark_autosave", "benchmark_json"))


def _configure_storage(config, state: FluxperfState, gpu_name: str) -> None:
    from ..env import gpu_slug
    from ..errors import BaselineError
    from .baseline import CREATE_COMMAND, ROOT_ENV, baseline_path, load_baseline

    opt = config.option
    state.active, state.gpu_name, state.slug = True, gpu_name, gpu_slug(gpu_name)
    state.root = Path(config.getoption("fluxperf_baselines") or os.environ.get(ROOT_ENV)
                      or config.rootpath / "baselines").resolve()
    if getattr(opt, "benchmark_storage", None) == DEFAULT_STORAGE:
        opt.benchmark_storage = f"file://{state.root / state.slug}"
        if opt.benchmark_save or opt.benchmark_autosave:
            raise pytest.UsageError(
                "--benchmark-save/--benchmark-autosave would write into the baselines directory "
                f"{state.root / state.slug}; baselines change only by an explicit command. Fix: run with "
                "--benchmark-json=run.json, then `fluxperf baseline update run.json`.")
    state.compare_fail_override = bool(getattr(opt, "benchmark_compare_fail", None))
    if not (opt.benchmark_compare or opt.benchmark_compare_fail):
        return
    path = baseline_path(state.slug, state.root)
    if not path.exists():
        state.no_baseline_message = (
            f"fluxperf: no baseline for GPU {gpu_name!r} (expected {path}); comparison skipped. Create one with: "
            f"{CREATE_COMMAND}   (or: pytest -m gpu perf --benchmark-json=run.json && fluxperf baseline update run.json)")
        opt.benchmark_compare, opt.benchmark_compare_fail = [], None
        state.compare_fail_override = False
        return
    try:
        state.baseline = load_baseline(path, expected_slug=state.slug)
    except BaselineError as exc:
        pytest.exit(f"fluxperf baseline error: {exc}", returncode=EXIT_BASELINE_ERROR)
    state.baseline_path = path
    if opt.benchmark_compare is True or opt.benchmark_compare == []:
        opt.benchmark_compare = str(path)


def pytest_report_header(config):
    state = state_of(config)
    if not state.active:
        return None
    where = state.baseline_path or "none"
    return f"fluxperf: GPU {state.gpu_name!r} -> storage {state.root / state.slug}; baseline: {where}"


def pytest_collection_modifyitems(config, items):
    wanted = [g for value in config.getoption("perf_group") for g in value.split(",") if g]
    if not wanted:
        return
    unknown = sorted(set(wanted) - set(GROUPS))
    if unknown:
        raise pytest.UsageError(f"--perf-group {unknown}: unknown group. Fix: use one of {list(GROUPS)}.")
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("perf_group")
        (keep if marker and marker.args and marker.args[0] in wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fluxperf"] = state_of(config).current_fingerprint()


def pytest_sessionfinish(session, exitstatus):
    from .stats import worst

    state = state_of(session.config)
    if state.report_dir:
        state.report_paths = _write_reports(session.config, state)
    if not state.comparisons:
        return
    state.outcome = worst([c.outcome for c in state.comparisons])
    if state.compare_fail_override:
        return  # --benchmark-compare-fail given: pytest-benchmark's check decides
    if session.exitstatus == 0 and state.outcome in _EXIT_BY_OUTCOME:
        session.exitstatus = _EXIT_BY_OUTCOME[state.outcome]


def _write_reports(config, state: FluxperfState) -> dict:
    from .baseline import benchmarks_by_name
    from .report import build_table, write_reports

    bs = getattr(config, "_benchmarksession", None)
    current = [b.as_dict(include_data=True) for b in (bs.benchmarks if bs else []) if b and not b.has_error]
    if not current:
        return {}
    comparisons = {c.name: c for c in state.comparisons}
    df = build_table(current, benchmarks_by_name(state.baseline) if state.baseline else None, comparisons)
    return write_reports(df, state.report_dir)


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's summary, which may raise PerformanceRegression
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = state_of(config)
    if not (state.no_baseline_message or state.comparisons or state.report_paths):
        return
    tr = terminalreporter
    tr.section("fluxperf: comparison against per-GPU baseline")
    if state.no_baseline_message:
        tr.write_line(state.no_baseline_message, yellow=True)
    for c in state.comparisons:
        if c.outcome == "pass":
            t = c.checks[0]
            tr.write_line(f"PASS {c.name}: {c.baseline_median_ms:.2f} -> {c.current_median_ms:.2f} ms "
                          f"({t.change:+.1%}, threshold {t.threshold:.1%}, {c.decided_by})", green=True)
        else:
            tr.write_line(c.message(), red=c.outcome == "regression", yellow=c.outcome == "inconclusive")
    if state.missing:
        tr.write_line(f"not in the baseline (not compared): {', '.join(state.missing)}", yellow=True)
    if state.outcome:
        code = 0 if state.outcome == "pass" else _EXIT_BY_OUTCOME[state.outcome]
        how = ("--benchmark-compare-fail decides the exit status" if state.compare_fail_override
               else f"exit status {code} if all tests passed")
        tr.write_line(f"fluxperf outcome: {state.outcome.upper()} ({how})", bold=True)
    for kind, path in state.report_paths.items():
        tr.write_line(f"report ({kind}): {path}")
