"""The pytest plugin, run in-process with pytester: storage path from the GPU name, skip message, exit statuses."""

from __future__ import annotations

import json

import matplotlib  # noqa: F401  (imported once here: pytester's in-process runs cannot re-import numpy)
import pandas  # noqa: F401
import pytest
import scipy.stats  # noqa: F401
import torch  # noqa: F401  (same reason: a C extension must not be imported twice in one process)
from root_conftest import run_in_process

from fluxperf.bench import (
    EXIT_BASELINE_ERROR,
    EXIT_INCONCLUSIVE,
    EXIT_NO_BASELINE,
    EXIT_NOT_MEASURED,
    EXIT_REGRESSION,
)
from fluxperf.bench.baseline import BASELINE_NAME, CREATE_COMMAND
from fluxperf.bench.baseline_update import build_baseline
from fluxperf.bench.fakes import H100, fake_run, noisy

pytest_plugins = ["pytester"]
SLUG = "nvidia-h100-80gb-hbm3"
NODE = "test_step.py::test_step"

TEST_FILE = """
import json, os
from fluxperf.bench.pytest_plugin import judge

def test_step(benchmark, request):
    benchmark.pedantic(lambda: None, rounds=3)
    current = {"fullname": request.node.nodeid, "stats": {"data": json.loads(os.environ["FAKE_SAMPLES"])},
               "extra_info": json.loads(os.environ.get("FAKE_EXTRA", "{}"))}
    judge(request.config, current)
"""


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.setenv("FLUXPERF_GPU_NAME", H100)
    monkeypatch.delenv("FLUXPERF_BASELINES", raising=False)
    monkeypatch.setenv("FAKE_SAMPLES", json.dumps(noisy(0.131, 20, seed=5)))
    pytester.makeconftest('pytest_plugins = ["fluxperf.bench.pytest_plugin"]\n')
    pytester.makepyfile(test_step=TEST_FILE)
    return pytester


run = run_in_process  # root conftest: no cache provider, fast machine info


def store_baseline(pytester, samples, gpu=H100, slug=SLUG):
    baseline, _ = build_baseline([("r", fake_run({NODE: samples}, gpu=gpu))], command="test")
    path = pytester.path / "baselines" / slug / BASELINE_NAME
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(baseline))
    return path


def test_storage_follows_the_detected_gpu_and_machine_info_has_it(project):
    result = run(project, "--benchmark-json=out.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"fluxperf: GPU '{H100}' (*FLUXPERF_GPU_NAME) -> storage *baselines/{SLUG}; baseline: none"])
    info = json.loads((project.path / "out.json").read_text())["machine_info"]["fluxperf"]
    assert info["slug"] == SLUG and info["gpu"]["name"] == H100 and "torch" in info["versions"]


def test_no_baseline_is_its_own_status_and_names_the_command(project):
    result = run(project, "--benchmark-compare")
    assert result.ret == EXIT_NO_BASELINE
    result.stdout.fnmatch_lines([f"*no baseline for GPU '{H100}'*{CREATE_COMMAND}*",
                                 "fluxperf outcome: NO_BASELINE (exit status 13)*"])
    allowed = run(project, "--benchmark-compare", "--allow-missing-baseline")
    assert allowed.ret == 0
    allowed.stdout.fnmatch_lines(["*missing baselines accepted by --allow-missing-baseline*"])


def test_same_code_passes_with_exit_0(project):
    store_baseline(project, noisy(0.131, 20, seed=1))
    result = run(project, "--benchmark-compare")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["PASS test_step.py::test_step*", "fluxperf outcome: PASS*"])


def test_regression_exits_10_with_a_clear_message(project, monkeypatch):
    store_baseline(project, noisy(0.131, 20, seed=1))
    monkeypatch.setenv("FAKE_SAMPLES", json.dumps([x * 1.05 for x in noisy(0.131, 20, seed=5)]))
    result = run(project, "--benchmark-compare", "--fluxperf-report", "rep")
    assert result.ret == EXIT_REGRESSION
    result.stdout.fnmatch_lines(["REGRESSION test_step.py::test_step: decided by time: *> 3.0% and Mann-Whitney*",
                                 "  time (regression): median * ms (baseline) -> * ms (current)*",
                                 "fluxperf outcome: REGRESSION (exit status 10*"])
    assert (project.path / "rep" / "report.csv").exists()


def test_throttled_measurement_exits_11_not_10(project, monkeypatch):
    store_baseline(project, noisy(0.131, 20, seed=1))
    monkeypatch.setenv("FAKE_SAMPLES", json.dumps([x * 2.5 for x in noisy(0.131, 20, seed=5)]))
    monkeypatch.setenv("FAKE_EXTRA", json.dumps({"monitor": {"verdict": {"throttled": True,
                                                                         "reasons": ["hw_thermal in 9/10"]}}}))
    result = run(project, "--benchmark-compare")
    assert result.ret == EXIT_INCONCLUSIVE
    result.stdout.fnmatch_lines(["INCONCLUSIVE test_step.py::test_step*GPU throttled: hw_thermal*"])


def test_corrupt_or_foreign_baseline_is_an_error(project):
    path = store_baseline(project, noisy(0.131, 20, seed=1), gpu="NVIDIA H200", slug=SLUG)
    result = run(project, "--benchmark-compare")
    assert result.ret == EXIT_BASELINE_ERROR
    assert "recorded on GPU 'nvidia-h200'" in result.stderr.str() + result.stdout.str()
    path.write_text("{")
    assert run(project, "--benchmark-compare").ret == EXIT_BASELINE_ERROR


def test_benchmark_compare_fail_on_the_command_line_overrides(project, monkeypatch):
    store_baseline(project, noisy(0.131, 20, seed=1))
    monkeypatch.setenv("FAKE_SAMPLES", json.dumps([x * 1.05 for x in noisy(0.131, 20, seed=5)]))
    # pytest-benchmark compares its own pedantic stats (a no-op: far faster than the baseline): no failure
    result = run(project, "--benchmark-compare", "--benchmark-compare-fail=median:5%")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*--benchmark-compare-fail decides the exit status*"])


def test_compare_on_a_machine_without_gpu_is_not_measured_but_plain_runs_are_inert(project, monkeypatch):
    monkeypatch.delenv("FLUXPERF_GPU_NAME")
    monkeypatch.setattr("fluxperf.env._torch_device", lambda device: None)
    monkeypatch.setattr("fluxperf.env._nvml", lambda: None)  # e.g. no nvidia-ml-py and no CUDA torch
    result = run(project, "--benchmark-compare")
    assert result.ret == EXIT_NOT_MEASURED
    result.stdout.fnmatch_lines(["fluxperf: no GPU found*", "*nothing was measured*"])
    monkeypatch.setenv("FLUXPERF_GPU_NAME", H100)
    assert "fluxperf" not in run(project).stdout.str()
    assert not (project.path / "baselines").exists()


def test_saving_into_the_baselines_directory_is_refused(project):
    result = run(project, "--benchmark-save=x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "fluxperf baseline update" in result.stderr.str()


def test_benchmark_compare_fail_still_fails_on_its_own_check(project, monkeypatch):
    store_baseline(project, [1e-9] * 20)  # pytest-benchmark's no-op rounds are far slower than this
    monkeypatch.setenv("FAKE_SAMPLES", json.dumps([1e-9] * 20))  # our rule: unchanged
    result = run(project, "--benchmark-compare", "--benchmark-compare-fail=median:5%")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR  # pytest-benchmark raises PerformanceRegression
    assert "Performance has regressed" in result.stdout.str() + result.stderr.str()


TWO_TESTS = """
import json, os, pytest
from fluxperf.bench.pytest_plugin import judge

def _measure(benchmark, request):
    benchmark.pedantic(lambda: None, rounds=3)
    judge(request.config, {"fullname": request.node.nodeid, "stats": {"data": json.loads(os.environ["FAKE_SAMPLES"])},
                           "extra_info": {}})

def test_a(benchmark, request):
    _measure(benchmark, request)

def test_b(benchmark, request):
    if os.environ.get("SKIP_B"):
        pytest.skip("fa3 missing after a nightly reinstall")
    _measure(benchmark, request)
"""


def test_a_baselined_benchmark_that_did_not_run_is_named_and_not_a_pass(project, monkeypatch):
    project.makepyfile(test_step=TWO_TESTS)
    samples = noisy(0.131, 20, seed=1)
    baseline, _ = build_baseline([("r", fake_run({"test_step.py::test_a": samples, "test_step.py::test_b": samples}))],
                                 command="test")
    path = project.path / "baselines" / SLUG / BASELINE_NAME
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(baseline))
    assert run(project, "--benchmark-compare").ret == 0
    monkeypatch.setenv("SKIP_B", "1")
    result = run(project, "--benchmark-compare", "--benchmark-json=out.json", "--fluxperf-report", "rep")
    assert result.ret == EXIT_INCONCLUSIVE
    result.stdout.fnmatch_lines(["*baselined but did not run (1; skipped or errored*): test_step.py::test_b*",
                                 "fluxperf outcome: INCONCLUSIVE (exit status 11)*"])
    report = json.loads((project.path / "rep" / "report.json").read_text())
    assert report["did_not_run"] == ["test_step.py::test_b"]
    assert "test_step.py::test_b" in (project.path / "rep" / "report.md").read_text()
    run_json = json.loads((project.path / "out.json").read_text())
    assert run_json["fluxperf"]["selected"] == ["test_step.py::test_a", "test_step.py::test_b"]
    # the offline judge reads the same selection from the run file and agrees
    from fluxperf.cli import main

    assert main(["baseline", "check", str(project.path / "out.json"), "--root", str(project.path / "baselines")]) \
        in (EXIT_INCONCLUSIVE, EXIT_REGRESSION)  # pedantic no-op rounds vs the fake baseline: never PASS


def test_every_test_skipped_is_not_measured(project, monkeypatch):
    project.makepyfile(test_step="import pytest\n\ndef test_step(benchmark):\n    pytest.skip('no GPU')\n")
    store_baseline(project, noisy(0.131, 20, seed=1))
    result = run(project, "--benchmark-compare")
    assert result.ret == EXIT_NOT_MEASURED


def test_gpu_tier_where_nothing_ran_exits_14(pytester):
    pytester.makeconftest('pytest_plugins = ["fluxperf.bench.pytest_plugin"]\n'
                          'def pytest_configure(config):\n    config.addinivalue_line("markers", "gpu: g")\n')
    pytester.makepyfile(test_g="import pytest\n\n@pytest.mark.gpu\ndef test_g():\n    pytest.skip('no CUDA')\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-m", "gpu")
    assert result.ret == EXIT_NOT_MEASURED
    result.stdout.fnmatch_lines(["*no test ran (1 collected: all skipped or deselected)*"])
    assert pytester.runpytest_inprocess("-p", "no:cacheprovider").ret == 0  # the CPU tier is unaffected


def test_report_directory_failure_keeps_the_verdict(project, monkeypatch, tmp_path):
    store_baseline(project, noisy(0.131, 20, seed=1))
    monkeypatch.setenv("FAKE_SAMPLES", json.dumps([x * 1.05 for x in noisy(0.131, 20, seed=5)]))
    blocked = project.path / "blocked"
    blocked.write_text("a file where the report directory should be")
    result = run(project, "--benchmark-compare", "--fluxperf-report", str(blocked / "rep"))
    assert result.ret == EXIT_REGRESSION
    result.stdout.fnmatch_lines(["REGRESSION test_step.py::test_step*", "fluxperf outcome: REGRESSION*",
                                 "report not written to *"])


def test_baselines_outside_the_working_directory(project, monkeypatch, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    baseline, _ = build_baseline([("r", fake_run({NODE: noisy(0.131, 20, seed=1)}))], command="test")
    (elsewhere / SLUG).mkdir()
    (elsewhere / SLUG / BASELINE_NAME).write_text(json.dumps(baseline))
    monkeypatch.setenv("FLUXPERF_BASELINES", str(elsewhere))
    result = run(project, "--benchmark-compare")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["PASS test_step.py::test_step*"])


@pytest.mark.parametrize("sample", ["Infinity", "true", "NaN", '"0.13"'])
def test_non_finite_or_boolean_baseline_sample_is_a_baseline_error(project, sample):
    path = store_baseline(project, noisy(0.131, 20, seed=1))
    text = path.read_text()
    data = json.loads(text)
    first = json.dumps(data["benchmarks"][0]["stats"]["data"][0])
    path.write_text(text.replace(first, sample, 1))
    result = run(project, "--benchmark-compare")
    assert result.ret == EXIT_BASELINE_ERROR
    assert "stats.data[0]" in result.stdout.str() + result.stderr.str()


def test_a_plotting_failure_in_the_report_keeps_the_verdict(project, monkeypatch):
    """Not only OSError: anything the table/plot libraries raise is reported, never an INTERNALERROR (exit 3)."""
    store_baseline(project, noisy(0.131, 20, seed=1))
    monkeypatch.setenv("FAKE_SAMPLES", json.dumps([x * 1.05 for x in noisy(0.131, 20, seed=5)]))

    def broken_plot(*args, **kwargs):
        raise ValueError("Single argument to subplot must be a three-digit integer")

    monkeypatch.setattr("fluxperf.bench.report.ladder_png", broken_plot)
    result = run(project, "--benchmark-compare", "--fluxperf-report", "rep")
    assert result.ret == EXIT_REGRESSION
    result.stdout.fnmatch_lines(["fluxperf outcome: REGRESSION*", "report not written to rep: ValueError: Single*"])
