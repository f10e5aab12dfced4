"""pytest plugin: per-GPU baseline storage, GPU machine info, the judge's verdict and exit statuses.

Loaded from the root conftest (`pytest_plugins = ["fluxperf.bench.pytest_plugin"]`). Importing it is cheap (no
torch, no CUDA). With a --benchmark-{compare,save,autosave,json} option:

* the GPU is the CUDA device in use (fluxperf.env.gpu_identity: torch, NVML by UUID; $FLUXPERF_GPU_NAME
  overrides). --benchmark-storage (if left at its default) becomes baselines/<gpu-slug>/ and a bare
  --benchmark-compare means baselines/<gpu-slug>/0001_baseline.json;
* --benchmark-save/--benchmark-autosave into baselines/ are refused (baselines change only through
  `fluxperf baseline update`);
* `pytest_benchmark_update_machine_info` adds the GPU identity and package versions; the run JSON records the
  benchmarks this session selected (`fluxperf.selected`), so an offline check knows which did not run;
* benchmarks report their records with `judge()`; at the end fluxperf.bench.judge turns them into one Verdict,
  printed before anything else is written, and its exit status replaces 0 (see judge.py for the table:
  10 regression, 11 inconclusive, 12 baseline error, 13 no baseline, 14 nothing measured). With
  --benchmark-compare-fail on the command line, pytest-benchmark's own check decides instead.

Independently of benchmarks: --perf-group NAME selects one group of the perf tier (see GROUPS), and a GPU tier
(`-m gpu`, or --fluxperf-require-tests) where no test ran at all exits 14, never 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fluxperf.bench.judge import ALLOW_MISSING_FLAG, EXIT_STATUS, NOT_MEASURED, Verdict

# --shard I/N (one worker per GPU; fluxperf/bench/shard.py) comes with this plugin
pytest_plugins = ["fluxperf.bench.shard"]

DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's default --benchmark-storage
EXIT_REPORT_ERROR = 15  # the verdict passed but --fluxperf-report could not be written

# Perf-tier groups: each runs cold in under 9 minutes on one H100/H200 (see perf/README.md for the budgets).
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
    "experiment": "experiment-table step rungs: fa2 (SDPA flash), int8 (torchao int8, eager), compile_int8",
    "experiment_dev": "experiment-table FLUX.1-dev 28-step images, eager: teacache, fa2_fbcache_float8, fa2_fbcache_int8",
    "compile_faithful": "flux-fast's compile (whole model, max-autotune without CUDA graphs, fullgraph) on the flags "
                        "stack; compare with step[flags]",
    "speed": "issue 17's float8 GEMM levers: float8_only (compile + torchao float8, cuDNN SDPA) against the same "
             "stack with row-wise scales (float8_only_row), static calibrated activation scales (float8_static), "
             "Inductor's GEMM autotuning (float8_autotune) and a whole-call CUDA graph (float8_graph)",
    "parallel": "context-parallel rungs' transformer step and cp2_ulysses's FLUX.1-dev 28-step image on 2 GPUs (one "
                "process per GPU, NCCL) and the single-GPU compile/bf16 steps and image they scale from (needs "
                "perf-tier.sh --gpus 2: FLUXPERF_GPU_COUNT=2)",
}
_KEY = pytest.StashKey["FluxperfState"]()
_NEVER_HANDED_OVER = ("baseline_error", "not_measured", "no_baseline")


@dataclass
class FluxperfState:
    """What the plugin knows during a session (reachable from tests via state_of(config))."""

    active: bool = False
    comparing: bool = False
    gpu: object | None = None  # env.GpuIdentity
    root: Path | None = None
    baseline: dict | None = None
    baseline_path: Path | None = None
    no_baseline_message: str | None = None
    allow_missing_baseline: bool = False
    compare_fail_override: bool = False
    kernel_tables: bool = False
    report_dir: str | None = None
    comparisons: list = field(default_factory=list)
    measured: list[str] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    report_paths: dict = field(default_factory=dict)
    report_error: str | None = None
    nothing_ran: str | None = None
    tests_ran: int = 0
    _fingerprint: dict | None = None

    @property
    def slug(self) -> str | None:
        return self.gpu.slug if self.gpu is not None else None

    def current_fingerprint(self) -> dict:
        if self._fingerprint is None:
            from fluxperf.bench.baseline import machine_fingerprint

            self._fingerprint = machine_fingerprint(self.gpu)
        return self._fingerprint


def state_of(config) -> FluxperfState:
    """The session's FluxperfState (a fresh inert one if the plugin did not configure this session)."""
    return config.stash.setdefault(_KEY, FluxperfState())


def judge(config, current: dict, *, remeasure=None):
    """Record one benchmark's measurement and compare it with this GPU's baseline; None without a baseline record.

    Args:
        config: the pytest config.
        current: {"fullname", "stats": {"data": per-round seconds}, "extra_info": {...}}.
        remeasure: optional callable returning a fresh record (same shape); called once when the first verdict
            is a regression or an invalid (throttled) measurement, and the second verdict decides.
    """
    from fluxperf.bench.judge import compare_one

    state = state_of(config)
    if state.baseline is None:
        state.measured.append(current["fullname"])
        return None
    # counted as measured only once judged: a comparison that raises leaves it "selected but did not run"
    comparison = compare_one(current, state.baseline, current_fp=state.current_fingerprint(), remeasure=remeasure)
    state.measured.append(current["fullname"])
    if comparison is not None:
        state.comparisons.append(comparison)
    return comparison


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
                    help="write report.md, report.csv, report.json and report-ladder.png (current vs baseline) into DIR")
    group.addoption(ALLOW_MISSING_FLAG, action="store_true", default=False,
                    help="a GPU or benchmark without a baseline passes (printed in the summary) instead of exit 13")
    group.addoption("--fluxperf-require-tests", action="store_true", default=False,
                    help="exit 14 when no test ran (all skipped or deselected); implied by -m selecting gpu tests")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's (trylast) configure reads the storage option
def pytest_configure(config):
    config.addinivalue_line("markers", "perf_group(name): the perf-tier group a benchmark belongs to")
    state = state_of(config)
    state.kernel_tables = bool(config.getoption("fluxperf_kernel_tables"))
    state.report_dir = config.getoption("fluxperf_report")
    state.allow_missing_baseline = bool(config.getoption("allow_missing_baseline"))
    if not _benchmarks_requested(config):
        return
    from fluxperf.bench.baseline import detect_gpu

    state.active = True
    opt = config.option
    state.comparing = bool(opt.benchmark_compare or opt.benchmark_compare_fail)
    state.gpu = detect_gpu()
    if state.gpu is None:  # nothing can be measured here; --benchmark-compare then ends "not measured"
        opt.benchmark_compare, opt.benchmark_compare_fail = [], None
        return
    _configure_storage(config, state)


def _benchmarks_requested(config) -> bool:
    opt = config.option
    return any(getattr(opt, k, None) for k in ("benchmark_compare", "benchmark_compare_fail", "benchmark_save",
                                                 "benchmark_autosave", "benchmark_json"))


def _configure_storage(config, state: FluxperfState) -> None:
    from fluxperf.bench.baseline import CREATE_COMMAND, ROOT_ENV, baseline_path, load_baseline
    from fluxperf.errors import BaselineError

    opt = config.option
    state.root = Path(config.getoption("fluxperf_baselines") or os.environ.get(ROOT_ENV)
                      or config.rootpath / "baselines").resolve()
    if getattr(opt, "benchmark_storage", None) == DEFAULT_STORAGE:
        opt.benchmark_storage = f"file://{state.root / state.slug}"
        if opt.benchmark_save or opt.benchmark_autosave:
            raise pytest.UsageError(
                "--benchmark-save/--benchmark-autosave would write into the baselines directory "
                f"{state.root / state.slug}; baselines change only by an explicit command. Fix: run with "
                "--benchmark-json=run.json, then `fluxperf baseline update run.json`.")
        _storage_location_anywhere(config)
    state.compare_fail_override = bool(getattr(opt, "benchmark_compare_fail", None))
    if not state.comparing:
        return
    path = baseline_path(state.slug, state.root)
    if not path.exists():
        state.no_baseline_message = (
            f"no baseline for GPU {state.gpu.name!r} (expected {path}): nothing was compared. Create one with: "
            f"{CREATE_COMMAND}   (or: pytest -m gpu perf --benchmark-json=run.json && fluxperf baseline update "
            f"run.json); to let a missing baseline pass, add {ALLOW_MISSING_FLAG}")
        opt.benchmark_compare, opt.benchmark_compare_fail = [], None
        state.compare_fail_override = False
        return
    try:
        state.baseline = load_baseline(path, expected_slug=state.slug)
    except BaselineError as exc:
        pytest.exit(f"fluxperf baseline error: {exc}", returncode=EXIT_STATUS["baseline_error"])
    state.baseline_path = path
    if opt.benchmark_compare is True or opt.benchmark_compare == []:
        opt.benchmark_compare = str(path)


def _storage_location_anywhere(config) -> None:
    """pytest-benchmark's FileStorage.location is `path.relative_to(cwd)`, which raises (INTERNALERROR) for
    baselines outside the working directory ($FLUXPERF_BASELINES=/abs/path, `pytest <repo>/perf` run from
    elsewhere). Give this session's storage a location that works anywhere; restored at unconfigure."""
    from pytest_benchmark.storage.file import FileStorage

    original = FileStorage.location

    def location(self) -> str:
        return os.path.relpath(self.path) if not os.path.relpath(self.path).startswith("..") else str(self.path)

    FileStorage.location = property(location)
    config.add_cleanup(lambda: setattr(FileStorage, "location", original))


def pytest_report_header(config):
    state = state_of(config)
    if not state.active:
        return None
    if state.gpu is None:
        return "fluxperf: no GPU found (torch.cuda and NVML): benchmarks cannot measure here"
    where = state.baseline_path or "none"
    return (f"fluxperf: GPU {state.gpu.name!r} ({state.gpu.uuid or 'no UUID'}, via {state.gpu.source}) -> storage "
            f"{state.root / state.slug}; baseline: {where}")


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


def pytest_collection_finish(session):
    state_of(session.config).selected = [i.nodeid for i in session.items
                                         if "benchmark" in getattr(i, "fixturenames", ())]


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fluxperf"] = state_of(config).current_fingerprint()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fluxperf"] = {"selected": state_of(config).selected}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and not report.skipped:
        state_of(item.config).tests_ran += 1
    return report


def _requires_tests(config) -> bool:
    """A GPU tier (-m selecting gpu tests) or --fluxperf-require-tests: a run where no test ran cannot pass."""
    if config.getoption("collectonly", False):
        return False
    expr = (config.getoption("markexpr", "") or "").replace(" ", "")
    return bool(config.getoption("fluxperf_require_tests")) or ("gpu" in expr and "notgpu" not in expr)


def pytest_sessionfinish(session, exitstatus):
    state = state_of(session.config)
    if _requires_tests(session.config) and state.tests_ran == 0:
        state.nothing_ran = (f"no test ran ({session.testscollected} collected: all skipped or deselected) in a "
                             "tier that must measure something (-m gpu or --fluxperf-require-tests); see the skip "
                             "reasons above (-rs)")
    if state.nothing_ran and session.exitstatus in (0, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = EXIT_STATUS[NOT_MEASURED]
    if state.active and state.comparing:
        state.verdict = _verdict(state)
        # --benchmark-compare-fail hands the timing decision to pytest-benchmark, never "nothing was compared"
        decides = not state.compare_fail_override or state.verdict.outcome in _NEVER_HANDED_OVER
        if decides and session.exitstatus == 0:
            session.exitstatus = state.verdict.exit_status
    if state.report_dir:
        try:
            state.report_paths = _write_reports(session.config, state)
        except Exception as exc:  # noqa: BLE001 - reported (status 15 on a pass), never allowed to eat the verdict
            # OSError (read-only dir) or anything the table/plot libraries raise: the verdict's status stands
            state.report_error = f"report not written to {state.report_dir}: {type(exc).__name__}: {exc}"
            if session.exitstatus == 0:
                session.exitstatus = EXIT_REPORT_ERROR


def _verdict(state: FluxperfState) -> Verdict:
    if state.gpu is None:
        return Verdict(measured=0)
    verdict = Verdict(comparisons=list(state.comparisons), no_baseline_message=state.no_baseline_message,
                      allow_missing_baseline=state.allow_missing_baseline, measured=len(set(state.measured)))
    if state.baseline is not None:
        baselined = {b["fullname"] for b in state.baseline["benchmarks"]}
        verdict.unbaselined = sorted(set(state.measured) - baselined)
        verdict.did_not_run = sorted((baselined & set(state.selected)) - set(state.measured))
    return verdict


def _write_reports(config, state: FluxperfState) -> dict:
    from fluxperf.bench.baseline import benchmarks_by_name
    from fluxperf.bench.report import build_table, write_reports

    bs = getattr(config, "_benchmarksession", None)
    current = [b.as_dict(include_data=True) for b in (bs.benchmarks if bs else []) if b and not b.has_error]
    if not current and state.verdict is None:
        return {}
    comparisons = {c.name: c for c in state.comparisons}
    df = build_table(current, benchmarks_by_name(state.baseline) if state.baseline else None, comparisons)
    return write_reports(df, state.report_dir, verdict=state.verdict)


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's summary, which may raise PerformanceRegression
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = state_of(config)
    tr = terminalreporter
    if state.nothing_ran:
        tr.section("fluxperf: nothing ran")
        tr.write_line(f"{state.nothing_ran} (exit status {EXIT_STATUS[NOT_MEASURED]})", red=True)
    if state.verdict is None and not state.report_paths and not state.report_error:
        return
    tr.section("fluxperf: comparison against per-GPU baseline")
    if state.verdict is not None:
        colour = {"pass": "green", "inconclusive": "yellow", "no_baseline": "yellow"}
        for outcome, text in state.verdict.lines():
            tr.write_line(text, **{colour.get(outcome, "red"): True})
        how = ("; --benchmark-compare-fail decides the exit status" if state.compare_fail_override else "")
        tr.write_line(state.verdict.headline() + how, bold=True)
    for kind, path in state.report_paths.items():
        tr.write_line(f"report ({kind}): {path}")
    if state.report_error:
        tr.write_line(state.report_error, red=True)
