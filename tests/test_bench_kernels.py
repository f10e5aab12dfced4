"""The regression explainer's kernel tables: profile, save/load, compare, markdown."""

import pandas as pd
import pytest

from fluxperf.bench.kernels import (
    compare_kernel_tables,
    kernel_table_path,
    load_kernel_table,
    profile_kernel_table,
    save_kernel_table,
    table_from_records,
    to_markdown,
    totals,
)


def table(rows):
    return pd.DataFrame(rows, columns=["name", "count", "cuda_time_us"])


BASE = table([("gemm_bf16", 4, 400.0), ("flash_fwd", 2, 100.0), ("copy", 1, 5.0), ("triton_poi_0", 3, 30.0)])
CUR = table([("gemm_bf16", 4, 520.0), ("flash_fwd", 2, 100.0), ("triton_poi_0", 3, 20.0), ("cast_fp8", 2, 60.0)])


def test_compare_names_every_kind_of_change_largest_first():
    diff = compare_kernel_tables(BASE, CUR)
    assert list(diff["name"]) == ["gemm_bf16", "cast_fp8", "triton_poi_0", "copy", "flash_fwd"]
    assert dict(zip(diff["name"], diff["change"])) == {
        "gemm_bf16": "slower", "cast_fp8": "new", "triton_poi_0": "faster", "copy": "vanished", "flash_fwd": "same"}
    row = diff.iloc[0]
    assert row.delta_us == pytest.approx(120.0) and row.rel_change == pytest.approx(0.3)
    assert pd.isna(diff.set_index("name").loc["cast_fp8", "baseline_us"])


def test_compare_top_and_totals():
    assert len(compare_kernel_tables(BASE, CUR, top=2)) == 2
    t = totals(BASE, CUR)
    assert t["baseline_us"] == pytest.approx(535.0) and t["current_us"] == pytest.approx(700.0)


def test_duplicate_names_are_summed():
    dup = table([("k", 1, 10.0), ("k", 1, 5.0)])
    diff = compare_kernel_tables(dup, table([("k", 2, 15.0)]))
    assert list(diff["change"]) == ["same"] and diff.iloc[0].baseline_count == 2


def test_save_load_round_trip_is_atomic(tmp_path):
    path = tmp_path / "kernels" / "x.csv"
    save_kernel_table(BASE, path)
    pd.testing.assert_frame_equal(load_kernel_table(path), BASE, check_dtype=False)
    assert [p.name for p in path.parent.iterdir()] == ["x.csv"]


def test_bad_tables_and_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="cuda_time_us"):
        compare_kernel_tables(BASE, pd.DataFrame({"name": ["a"], "count": [1]}))
    with pytest.raises(FileNotFoundError, match="baseline update"):
        load_kernel_table(tmp_path / "nope.csv")


def test_markdown_escapes_and_shortens():
    diff = compare_kernel_tables(table([("a|b" + "x" * 200, 1, 1.0)]), table([("a|b" + "x" * 200, 1, 2.0)]))
    md = to_markdown(diff, max_name=40)
    assert "a\\|b" in md and "…" in md and "+100.0%" in md and md.count("\n") == 3


def test_path_matches_the_baseline_store():
    name = "perf/test_ladder.py::test_transformer_step[bf16]"
    assert kernel_table_path("k", name).name == "test_ladder.py-test_transformer_step-bf16.csv"
    baseline = pytest.importorskip("fluxperf.bench.baseline", reason="fluxperf.bench (perf tier) not present")
    assert kernel_table_path("k", name).stem == baseline.safe_name(name)


def test_records_round_trip():
    records = BASE.to_dict(orient="records")
    pd.testing.assert_frame_equal(table_from_records(records), BASE)


def test_profile_on_cpu_sees_the_injected_op():
    import torch

    x = torch.ones(32, 32)
    fast = profile_kernel_table(lambda: x @ x, device="cpu", warmup=0, iters=2)
    slow = profile_kernel_table(lambda: torch.sigmoid(x @ x), device="cpu", warmup=0, iters=2)
    assert list(fast.columns) == ["name", "count", "cuda_time_us"] and fast.attrs["device"] == "cpu"
    assert fast.set_index("name").loc["aten::mm", "count"] == 1.0  # per iteration
    diff = compare_kernel_tables(fast, slow).set_index("name")
    assert diff.loc["aten::sigmoid", "change"] == "new"


def test_profile_cuda_without_gpu_says_what_to_do():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the GPU test covers the cuda path")
    with pytest.raises(Exception, match="device='cpu'"):
        profile_kernel_table(lambda: None)


@pytest.mark.gpu
def test_profile_cuda_explains_an_injected_slowdown():
    import torch

    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    base = profile_kernel_table(lambda: a @ a)
    slow = profile_kernel_table(lambda: (a @ a).float().softmax(-1))  # injected: a cast and a softmax
    assert base["cuda_time_us"].sum() > 0 and (base["count"] >= 1).all()
    diff = compare_kernel_tables(base, slow)
    assert (diff["change"] == "new").sum() >= 1
    assert totals(base, slow)["ratio"] > 1.0
