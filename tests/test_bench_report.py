"""Report generation: pandas table, markdown, CSV and the ladder PNG."""

from __future__ import annotations

import pandas as pd
import pytest

from fluxperf.bench.compare import compare_records
from fluxperf.bench.fakes import fake_bench, noisy
from fluxperf.bench.report import build_table, to_markdown, write_reports


def ladder(scale=1.0, seed=0):
    return [fake_bench(f"perf/test_ladder.py::test_transformer_step[{r}]", noisy(ms / 1e3 * scale, 12, seed=seed),
                       {"metrics": {"tflops": 69.5e3 / ms, "mfu": 69.5e3 / ms / 780, "compile_cold_s": 22.0},
                        "proxies": {"peak_mem_gib": 30.1, "kernels_per_step": 1500}})
            for r, ms in (("bf16", 183.6), ("compile", 131.0), ("float8", 116.0))]


def test_table_markdown_csv_png(tmp_path):
    base, cur = ladder(), ladder(1.05, seed=3)
    comps = {c["fullname"]: compare_records(c, b) for c, b in zip(cur, base)}
    df = build_table(cur, {b["fullname"]: b for b in base}, comps)
    assert list(df["param"]) == ["bf16", "compile", "float8"]
    assert (df["outcome"] == "regression").all()
    assert df["change_pct"].between(3, 7).all()
    md = to_markdown(df)
    assert md.count("\n|") == 2 + 3 and "| test_transformer_step[compile] | compile |" in md
    paths = write_reports(df, tmp_path / "out")
    assert pd.read_csv(paths["csv"])["current_ms"].round(0).tolist() == df["current_ms"].round(0).tolist()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_without_baseline_say_so():
    df = build_table(ladder()[:1])
    assert df.loc[0, "outcome"] == "no baseline" and pd.isna(df.loc[0, "baseline_ms"])


def test_latency_statistics_columns_from_the_rounds():
    import numpy as np

    data = noisy(0.1836, 12, cv=0.02)  # 12 rounds: avg, min, p50, p90; p99 needs 100
    df = build_table([fake_bench("perf/test_ladder.py::test_image[bf16]", data)])
    ms = np.array(data) * 1e3
    row = df.iloc[0]
    assert row["avg_ms"] == pytest.approx(ms.mean()) and row["min_ms"] == pytest.approx(ms.min())
    assert row["p50_ms"] == pytest.approx(np.percentile(ms, 50)) == pytest.approx(row["current_ms"])
    assert row["p90_ms"] == pytest.approx(np.percentile(ms, 90, method="linear")) and pd.isna(row["p99_ms"])
    md = to_markdown(df)
    line = next(x for x in md.splitlines() if x.startswith("| test_image"))
    assert "n/a (needs 100 runs)" in line and f"{row['p90_ms']:.2f}" in line
    assert "Hyndman & Fan 1996 type 7" in md.splitlines()[-1]


def test_p99_is_reported_from_100_rounds(tmp_path):
    df = build_table([fake_bench("perf/test_ladder.py::test_image[bf16]", noisy(0.2, 100, cv=0.05))])
    assert df.loc[0, "p99_ms"] > df.loc[0, "p90_ms"] > df.loc[0, "p50_ms"] > df.loc[0, "min_ms"]
    assert "n/a" not in to_markdown(df)
    csv = pd.read_csv(write_reports(df, tmp_path)["csv"])
    assert csv.loc[0, "p99_ms"] == pytest.approx(df.loc[0, "p99_ms"])
