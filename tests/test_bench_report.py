"""Report generation: pandas table, markdown, CSV and the ladder PNG."""

from __future__ import annotations

import pandas as pd

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
