"""The JSONL nightly history: records from pytest-benchmark JSON, verdicts, atomic appends, series."""

import json
import threading

import pytest

from fluxperf.bench.baseline import load_baseline
from fluxperf.bench.baseline_update import update_baseline
from fluxperf.nightly.history import (
    append_entries,
    baseline_id,
    entries_from_benchmark_json,
    load_history,
    nightly_series,
)
from fluxperf.nightly.synthetic import benchmark_doc, noisy

NAME = "perf/test_step.py::test_step[bf16]"


def test_entry_fields_from_a_benchmark_json():
    doc = benchmark_doc({NAME: [100.0, 102.0, 98.0, 101.0]}, torch="2.14.0.dev20261121+cu130")
    (e,) = entries_from_benchmark_json(doc, date="2026-11-21", run_id="r1")
    assert e["benchmark"] == NAME and e["gpu"] == "nvidia-h100-80gb-hbm3"
    assert e["versions"]["torch"] == "2.14.0.dev20261121+cu130"
    assert e["median_ms"] == pytest.approx(100.5) and e["rounds"] == 4
    assert e["samples_ms"] == pytest.approx([100.0, 102.0, 98.0, 101.0])
    assert e["min_ms"] == pytest.approx(98.0) and e["verdict"] is None and e["attempt"] == 1


def test_the_perf_tier_verdict_wins():
    doc = benchmark_doc({NAME: noisy(100, 12)}, verdicts={NAME: "regression"})
    (e,) = entries_from_benchmark_json(doc, date="2026-11-21", run_id="r1")
    assert e["verdict"] == "regression" and "perf tier" in e["reason"]


def _baseline(tmp_path, samples_ms):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(benchmark_doc({NAME: samples_ms})))
    (path, *_) = update_baseline([run], root=tmp_path / "baselines", command="test")
    return path


def test_verdict_against_a_baseline_comes_from_the_one_judge(tmp_path):
    path = _baseline(tmp_path, noisy(100, 12, seed=1))
    base, bid = load_baseline(path), baseline_id(path)
    slow = benchmark_doc({NAME: noisy(115, 12, seed=2)})
    (e,) = entries_from_benchmark_json(slow, date="2026-11-21", run_id="r1", baseline=base, baseline_id=bid)
    assert e["verdict"] == "regression" and e["ratio"] == pytest.approx(1.15, rel=0.02) and e["baseline_id"] == bid
    same = benchmark_doc({NAME: noisy(100, 12, seed=3)})
    (e,) = entries_from_benchmark_json(same, date="2026-11-21", run_id="r1", baseline=base)
    assert e["verdict"] == "pass"


def test_baseline_id_changes_with_content(tmp_path):
    f = tmp_path / "0001_baseline.json"
    f.write_text(json.dumps(benchmark_doc({NAME: [1.0, 2.0]})))
    id1 = baseline_id(f)
    f.write_text(json.dumps(benchmark_doc({NAME: [1.0, 2.5]})))
    assert baseline_id(f) != id1 and baseline_id(tmp_path / "missing") is None


def test_older_history_lines_are_migrated_or_refused_by_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"date": "2026-11-20", "benchmark": "x", "samples_ms": [1, 3, 2], "verdict": "regressed"}\n')
    (e,) = load_history(path)
    assert e["median_ms"] == 2 and e["verdict"] == "regression"
    path.write_text('{"date": "2026-11-20", "benchmark": "x", "median_ms": 1}\n{"date": "2026-11-21", "benchmark": "x"}\n')
    with pytest.raises(ValueError, match="history.jsonl:2: median_ms = None"):
        load_history(path)


def test_records_without_samples_are_refused():
    doc = benchmark_doc({NAME: [1.0]})
    doc["benchmarks"][0]["stats"]["data"] = []
    with pytest.raises(ValueError, match="stats.data"):
        entries_from_benchmark_json(doc, date="2026-11-21", run_id="r1")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        entries_from_benchmark_json(benchmark_doc({NAME: [1.0]}), date="21/11/2026", run_id="r1")


def test_append_is_cumulative_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "h" / "history.jsonl"
    doc = benchmark_doc({NAME: [1.0, 2.0]})
    append_entries(path, entries_from_benchmark_json(doc, date="2026-11-20", run_id="a"))
    append_entries(path, entries_from_benchmark_json(doc, date="2026-11-21", run_id="b"))
    assert [e["date"] for e in load_history(path)] == ["2026-11-20", "2026-11-21"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["history.jsonl", "history.jsonl.lock"]


def test_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "history.jsonl"
    doc = benchmark_doc({NAME: [1.0, 2.0]})

    def worker(i):
        for j in range(5):
            append_entries(path, entries_from_benchmark_json(doc, date="2026-11-20", run_id=f"{i}-{j}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e["run_id"] for e in load_history(path)) == sorted(f"{i}-{j}" for i in range(4) for j in range(5))


def test_corrupt_line_is_named(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"date": "2026-11-20", "benchmark": "x", "median_ms": 1}\n{oops\n')
    with pytest.raises(ValueError, match="history.jsonl:2"):
        load_history(path)


def test_nightly_series_merges_attempts_per_date():
    entries = [{"date": "2026-11-21", "benchmark": "b", "attempt": 2, "median_ms": 12.0, "verdict": "regression"},
               {"date": "2026-11-20", "benchmark": "b", "attempt": 1, "median_ms": 10.0, "verdict": "pass"},
               {"date": "2026-11-21", "benchmark": "b", "attempt": 1, "median_ms": 14.0, "verdict": "regression"},
               {"date": "2026-11-21", "benchmark": "other", "attempt": 1, "median_ms": 99.0}]
    points = nightly_series(entries, "b")
    assert [p["date"] for p in points] == ["2026-11-20", "2026-11-21"]
    assert points[1]["median_ms"] == 13.0 and points[1]["attempts"] == 2
    assert points[1]["verdicts"] == ["regression", "regression"]
