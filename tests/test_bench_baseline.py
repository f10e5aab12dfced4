"""Per-GPU baselines: atomic update, corrupt / foreign-GPU errors, thresholds from repeated runs, provenance, CLI."""

from __future__ import annotations

import json
import os

import pytest

from fluxperf.bench import EXIT_BASELINE_ERROR, EXIT_NO_BASELINE, EXIT_REGRESSION, stats
from fluxperf.bench import baseline as bl
from fluxperf.bench import baseline_update as bu
from fluxperf.bench.fakes import H100, fake_run, noisy
from fluxperf.cli import main
from fluxperf.errors import BaselineError

NAME = "perf/test_ladder.py::test_transformer_step[compile]"
SLUG = "nvidia-h100-80gb-hbm3"


def write_run(path, run):
    path.write_text(json.dumps(run))
    return path


def make_baseline(tmp_path, *medians, extra_info=None):
    runs = [write_run(tmp_path / f"run{i}.json", fake_run({NAME: noisy(m, 20, seed=i)}, extra_info=extra_info))
            for i, m in enumerate(medians)]
    written = bu.update_baseline(runs, root=tmp_path / "baselines", command="test")
    return written[0]


def test_update_writes_the_slug_directory_with_provenance_and_thresholds(tmp_path):
    path = make_baseline(tmp_path, 0.131, 0.1315, 0.1312)
    assert path == tmp_path / "baselines" / SLUG / "0001_baseline.json"
    data = bl.load_baseline(path, expected_slug=SLUG)
    meta = data["fluxperf"]
    assert meta["gpu_slug"] == SLUG and meta["provenance"]["command"] == "test"
    assert set(meta["provenance"]) >= {"git_commit", "date", "versions", "command", "sources"}
    th = meta["thresholds"][NAME]
    assert th["runs"] == 3 and stats.FLOOR <= th["time"] <= stats.CAP
    assert data["benchmarks"][0]["stats"]["data"]  # per-round samples kept


def test_thresholds_grow_with_the_spread_of_repeated_runs(tmp_path):
    quiet = bu.derive_thresholds([fake_run({NAME: noisy(m, 20, seed=i)})["benchmarks"][0]
                                  for i, m in enumerate((0.131, 0.1311))])
    loud = bu.derive_thresholds([fake_run({NAME: noisy(m, 20, seed=i)})["benchmarks"][0]
                                 for i, m in enumerate((0.131, 0.139, 0.135))])
    assert quiet["time"] == stats.FLOOR
    assert loud["time"] > quiet["time"] and loud["time"] <= stats.CAP


def test_interrupted_update_leaves_the_old_baseline_intact(tmp_path, monkeypatch):
    path = make_baseline(tmp_path, 0.131)
    before = path.read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt("power cut between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        make_baseline(tmp_path, 0.200)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # temp file cleaned up


def test_corrupt_baseline_is_an_error(tmp_path):
    path = make_baseline(tmp_path, 0.131)
    good = json.loads(path.read_text())
    path.write_text(path.read_text()[:200])
    with pytest.raises(BaselineError, match="unreadable or not JSON"):
        bl.load_baseline(path, expected_slug=SLUG)
    path.write_text(json.dumps({**good, "benchmarks": [{"fullname": "x"}]}))
    with pytest.raises(BaselineError, match="stats"):
        bl.load_baseline(path)


def test_foreign_gpu_baseline_is_an_error(tmp_path):
    path = make_baseline(tmp_path, 0.131)
    with pytest.raises(BaselineError, match="nvidia-h200.*different hardware|different hardware"):
        bl.load_baseline(path, expected_slug="nvidia-h200")


def test_runs_from_two_gpus_or_with_injected_slowdown_are_refused(tmp_path):
    a = ("a", fake_run({NAME: [0.1] * 3}))
    b = ("b", fake_run({NAME: [0.1] * 3}, gpu="NVIDIA H200"))
    with pytest.raises(BaselineError, match="different GPUs"):
        bu.build_baseline([a, b], command="t")
    slow = ("s", fake_run({NAME: [0.1] * 3}, extra_info={"slowdown_injected": 0.05}))
    with pytest.raises(BaselineError, match="FLUXPERF_INJECT_SLOWDOWN"):
        bu.build_baseline([slow], command="t")


def test_update_merges_and_stores_kernel_tables(tmp_path):
    make_baseline(tmp_path, 0.131)
    other = "perf/test_vae.py::test_vae_decode[eager]"
    table = [{"name": "sm90_gemm", "count": 114.0, "cuda_time_us": 90000.0}]
    run = write_run(tmp_path / "vae.json", fake_run({other: noisy(0.09, 20)}, extra_info={"kernel_table": table}))
    written = bu.update_baseline([run], root=tmp_path / "baselines", command="t")
    data = bl.load_baseline(written[0])
    assert sorted(bl.benchmarks_by_name(data)) == sorted([NAME, other])
    assert "kernel_table" not in data["benchmarks"][1]["extra_info"]
    csv = [p for p in written if p.suffix == ".csv"]
    assert len(csv) == 1 and "sm90_gemm" in csv[0].read_text()


def test_cli_update_show_and_check_exit_statuses(tmp_path, capsys):
    root = tmp_path / "baselines"
    runs = [write_run(tmp_path / f"r{i}.json", fake_run({NAME: noisy(0.131, 20, seed=i)})) for i in range(2)]
    assert main(["baseline", "update", *map(str, runs), "--root", str(root)]) == 0
    assert main(["baseline", "show", "--gpu", SLUG, "--root", str(root)]) == 0
    assert "test_transformer_step[compile]" in capsys.readouterr().out
    same = write_run(tmp_path / "same.json", fake_run({NAME: noisy(0.131, 20, seed=9)}))
    assert main(["baseline", "check", str(same), "--root", str(root)]) == 0
    slow = write_run(tmp_path / "slow.json", fake_run({NAME: [x * 1.05 for x in noisy(0.131, 20, seed=9)]}))
    assert main(["baseline", "check", str(slow), "--root", str(root), "--report", str(tmp_path / "rep")]) == EXIT_REGRESSION
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "threshold" in out and (tmp_path / "rep" / "report.md").exists()
    (root / SLUG / bl.BASELINE_NAME).write_text("{not json")
    assert main(["baseline", "check", str(same), "--root", str(root)]) == EXIT_BASELINE_ERROR


def test_cli_check_without_baseline_names_the_command(tmp_path, capsys):
    run = write_run(tmp_path / "r.json", fake_run({NAME: [0.1] * 10}, gpu=H100))
    assert main(["baseline", "check", str(run), "--root", str(tmp_path / "none")]) == EXIT_NO_BASELINE
    out = capsys.readouterr().out
    assert bl.CREATE_COMMAND in out and "fluxperf outcome: NO_BASELINE (exit status 13)" in out
    assert main(["baseline", "check", str(run), "--root", str(tmp_path / "none"), "--allow-missing-baseline"]) == 0
    assert "accepted by --allow-missing-baseline" in capsys.readouterr().out
