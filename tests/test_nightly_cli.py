"""The nightly CLI verbs (fluxperf history/explain/bisect/nightly) on CPU."""

import json

import pandas as pd
import pytest

from fluxperf.bench.kernels import kernel_table_path, save_kernel_table
from fluxperf.cli import main


def kt(rows):
    return pd.DataFrame(rows, columns=["name", "count", "cuda_time_us"])


def test_explain_from_tables_prints_and_saves(tmp_path, capsys):
    name = "perf/test_x.py::test_step[bf16]"
    save_kernel_table(kt([("gemm", 1, 100.0)]), kernel_table_path(tmp_path / "base", name))
    save_kernel_table(kt([("gemm", 1, 150.0), ("extra_cast", 1, 10.0)]), tmp_path / "cur.csv")
    rc = main(["explain", "--benchmark", name, "--baseline-dir", str(tmp_path / "base"),
               "--current-table", str(tmp_path / "cur.csv"), "--out", str(tmp_path / "explain")])
    out = capsys.readouterr().out
    assert rc == 0 and "+60.0%" in out and "extra_cast" in out
    saved = pd.read_csv(kernel_table_path(tmp_path / "explain", name))
    assert list(saved["change"]) == ["slower", "new"]


def test_explain_from_a_run_without_kernel_tables_names_the_flag(tmp_path):
    from fluxperf.nightly.synthetic import benchmark_doc

    name = "perf/test_x.py::test_step[bf16]"
    (tmp_path / "run.json").write_text(json.dumps(benchmark_doc({name: [1.0, 2.0]})))
    save_kernel_table(kt([("gemm", 1, 100.0)]), tmp_path / "base.csv")
    with pytest.raises(SystemExit, match="--fluxperf-kernel-tables"):
        main(["explain", "--benchmark", name, "--baseline-table", str(tmp_path / "base.csv"),
              "--current-json", str(tmp_path / "run.json")])


def test_bisect_dry_run_lists_the_range_and_bound(capsys):
    versions = ",".join(f"2.14.0.dev202611{d:02d}" for d in range(1, 21))
    rc = main(["bisect", "--good", "2026-11-03", "--bad", "2026-11-19", "--test", "perf/x.py::t",
               "--versions", versions, "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "17 nightlies" in out and "at most 6 runs" in out and "2.14.0.dev20261119" in out


def test_confirm_without_records_is_not_a_regression(tmp_path, capsys):
    rc = main(["history", "confirm", "--history", str(tmp_path / "h.jsonl"), "--date", "2026-11-22",
               "--names-out", str(tmp_path / "names.txt")])
    assert rc == 4 and (tmp_path / "names.txt").read_text() == ""


def test_nightly_install_reports_an_unreachable_index(capsys):
    rc = main(["nightly", "install", "--index-url", "http://127.0.0.1:9/x", "--timeout", "3"])
    assert rc == 2 and "nightly install impossible" in capsys.readouterr().err


def test_summary_tier_argument_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["nightly", "summary", "--history", str(tmp_path / "h"), "--tier", "numerics", "--out",
              str(tmp_path / "s.md")])
    assert exit_.value.code == 2 and "must be NAME=RC" in capsys.readouterr().err


def test_a_history_line_without_median_fails_by_name_but_the_summary_is_still_written(tmp_path, capsys):
    hist = tmp_path / "history.jsonl"
    hist.write_text('{"date": "2026-11-22", "benchmark": "perf/t.py::t"}\n')
    out = tmp_path / "summary.md"
    rc = main(["nightly", "summary", "--history", str(hist), "--date", "2026-11-22", "--out", str(out)])
    assert rc == 12 and "history.jsonl:1: median_ms = None" in capsys.readouterr().err
    assert "is corrupt" in out.read_text()
    for verb in (["history", "plot", "--out", str(tmp_path / "p")], ["history", "changepoints"],
                 ["history", "confirm", "--date", "2026-11-22"]):
        assert main([*verb, "--history", str(hist)]) == 12
