"""Bench.run's protocol on CPU with the GPU parts replaced: records, metrics, comparison, one re-measurement."""

from __future__ import annotations

import types

import pytest

from fluxperf.bench import harness
from fluxperf.bench.baseline_update import build_baseline
from fluxperf.bench.fakes import fake_calibration, fake_run, noisy
from fluxperf.bench.pytest_plugin import state_of

NAME = "perf/test_ladder.py::test_transformer_step[compile]"


class FakeConfig:
    def __init__(self):
        self.stash = {}


def fake_measurement(median_s, seed):
    return {"samples_s": noisy(median_s, 20, seed=seed), "peak_mem_gib": 30.5,
            "calibration": {"before": fake_calibration(), "after": fake_calibration()},
            "monitor": {"available": True, "verdict": {"throttled": False, "reasons": []},
                        "sm_clock_mhz": {"median": 1650.0}}}


@pytest.fixture
def setup(monkeypatch):
    config = FakeConfig()  # a dict is enough of a stash for state_of()
    calls = []

    def measure(fn, *, rounds, warmup_rounds, benchmark=None):
        calls.append("pedantic" if benchmark is not None else "remeasure")
        return fake_measurement(0.131 * monkeypatch_slow[0], len(calls))

    monkeypatch_slow = [1.0]
    monkeypatch.setattr(harness, "measure", measure)
    monkeypatch.setattr(harness, "count_cuda_kernels", lambda fn: 1234)
    monkeypatch.setattr(harness, "dynamo_counts", lambda: {"frames": 57, "unique_graphs": 2, "graph_breaks": 0})
    bench = types.SimpleNamespace(extra_info={}, fullname=NAME)
    request = types.SimpleNamespace(config=config)
    return config, request, bench, calls, monkeypatch_slow


def with_baseline(config):
    extra = {"calibration": {"before": fake_calibration(), "after": fake_calibration()},
             "monitor": {"verdict": {"throttled": False, "reasons": []}, "sm_clock_mhz": {"median": 1650.0}},
             "proxies": {"kernels_per_step": 1234, "graph_breaks": 0, "recompiles": 0, "unique_graphs": 0,
                         "peak_mem_gib": 30.5},
             "metrics": {"compile_cold_s": 30.0, "compile_warm_s": 5.0}}
    state = state_of(config)
    state.baseline, _ = build_baseline([("r", fake_run({NAME: noisy(0.131, 20, seed=99)}, extra_info=extra))],
                                       command="t")


def test_records_metrics_and_proxies_without_baseline(setup):
    config, request, bench, calls, _ = setup
    extra = harness.Bench(request, bench).run(lambda: None, rounds=20, flops=69.5e12, first_call_s=25.0, setup_s=5.0,
                                              warm_compile=lambda: 5.131)
    assert calls == ["pedantic"]
    m = extra["metrics"]
    assert m["tflops"] == pytest.approx(69.5e12 / extra["median_ms"] / 1e9)
    assert m["mfu"] == pytest.approx(m["tflops"] / 780, rel=1e-6)
    assert m["compile_cold_s"] == pytest.approx(30.0 - extra["median_ms"] / 1e3)
    assert m["compile_warm_s"] == pytest.approx(5.131 - extra["median_ms"] / 1e3)
    assert extra["proxies"] == {"peak_mem_gib": 30.5, "recompiles": 0, "graph_breaks": 0, "unique_graphs": 0,
                                "kernels_per_step": 1234}
    assert "verdict" not in extra and extra["rounds"] == 20


def test_same_speed_passes_without_remeasure(setup):
    config, request, bench, calls, _ = setup
    with_baseline(config)
    extra = harness.Bench(request, bench).run(lambda: None, rounds=20, first_call_s=25.0, setup_s=5.0,
                                              warm_compile=lambda: 5.131)
    assert calls == ["pedantic"] and extra["verdict"]["outcome"] == "pass"
    assert [c.outcome for c in state_of(config).comparisons] == ["pass"]


def test_suspected_regression_is_remeasured_once_and_confirmed(setup):
    config, request, bench, calls, slow = setup
    with_baseline(config)
    slow[0] = 1.06
    extra = harness.Bench(request, bench).run(lambda: None, rounds=20, first_call_s=25.0, setup_s=5.0,
                                              warm_compile=lambda: 5.131)
    assert calls == ["pedantic", "remeasure"]
    assert extra["verdict"]["outcome"] == "regression"
    assert extra["remeasure"]["first"]["outcome"] == "regression" and len(extra["remeasure"]["samples_s"]) == 20


def test_cache_benchmarks_store_cached_steps_instead_of_a_kernel_count(setup):
    config, request, bench, calls, _ = setup
    extra = harness.Bench(request, bench).run(lambda: None, rounds=10, count_kernels=False,
                                              extra_proxies={"cached_steps": 6})
    assert extra["proxies"] == {"peak_mem_gib": 30.5, "recompiles": 0, "graph_breaks": 0, "unique_graphs": 0,
                                "cached_steps": 6}


def test_kept_compile_cache_points_inductor_at_the_directory_and_restores(tmp_path, monkeypatch):
    """The export rung's kept build cache: the env points at the directory inside, the previous values come back
    after (also after an error), and the directory stays for the next run to resume from."""
    import os

    from fluxperf.bench.harness import kept_compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/before")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with pytest.raises(RuntimeError), kept_compile_cache(tmp_path / "inductor") as d:
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(d) == str(tmp_path / "inductor")
        assert os.environ["TRITON_CACHE_DIR"] == str(d / "triton")
        raise RuntimeError("build stopped")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/before" and "TRITON_CACHE_DIR" not in os.environ
    assert (tmp_path / "inductor").is_dir()
