"""`fluxperf ladder` end to end on the tiny model (the README's main command, reduced to eager rungs)."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from fluxperf.bench.latency import latency_stats
from fluxperf.cli import build_parser, main
from fluxperf.measure.trace import region_counts
from fluxperf.optional import install_hint, probe


def test_ladder_writes_csv_json_pngs_and_traces(tmp_path, capsys):
    out = tmp_path / "ladder"
    code = main(["ladder", "--rungs", "baseline,bf16,fused_qkv", "--runs", "2", "--step-rounds", "2",
                 "--out", str(out), "--device", "cpu", "--trace-file", str(tmp_path / "tr" / "trace.json.gz")])
    assert code == 0
    df = pd.read_csv(out / "ladder.csv")
    assert list(df["rung"]) == ["baseline", "bf16", "fused_qkv"] and (df["status"] == "ok").all()
    assert (df["image_runs"] == 2).all() and (df["step_median_ms"] > 0).all()
    assert (df["image_min_ms"] > 0).all() and (df["image_min_ms"] <= df["image_avg_ms"] + 1e-9).all()
    assert df["image_p90_ms"].isna().all() and df["image_p99_ms"].isna().all()  # 2 runs: no p90, no p99
    record = json.loads((out / "ladder.json").read_text())
    assert record["ok"] and record["environment"]["versions"]["torch"]
    assert record["options"]["reference"] == "bf16" and record["rungs"][1]["psnr_db"] == "inf"
    assert 20 < record["rungs"][0]["psnr_db"] < 100  # fp32 vs bf16: close, not identical
    assert record["rungs"][2]["applied"]["qkv_fused"] is True
    assert "Hyndman & Fan" in record["latency_method"]
    for r in record["rungs"]:
        lat, samples = r["image_latency"], r["image_ms"]["samples_ms"]
        assert lat["p50_ms"] == pytest.approx(sum(samples) / 2) and lat["p99_ms"] is None
        assert lat["p99_needs_runs"] == 100 and "p90_ms" not in r["image_ms"]
        stages = r["stages"]  # the timed runs' breakdown: one denoising_step per step (schnell: 4)
        assert stages["runs"] == 2 and len(stages["denoising_step_median_ms"]) == 4
        assert stages["median_ms"]["decoding"] > 0 and stages["median_ms"]["total"] > stages["median_ms"]["denoising"]
        assert region_counts(r["trace_file"]) == {"prompt_encoding": 1, "denoising_step": 4, "decoding": 1,
                                                  "postprocessing": 1, "pil_conversion": 1}
    assert r["trace_file"] == str(tmp_path / "tr" / "trace.fused_qkv.json.gz")
    printed = capsys.readouterr().out
    assert "n/a (needs 10 runs)" in printed and "n/a (needs 100 runs)" in printed and "type 7" in printed
    assert "n/a (needs 100 runs)" in (out / "ladder.md").read_text()
    for name in ("baseline", "bf16", "fused_qkv", "ladder"):
        assert Image.open(out / f"{name}.png").size[0] > 0


def _result_with_runs(*ns):
    from fluxperf.measure.ladder_run import LadderOptions, LadderResult, RungResult

    rungs = [RungResult(rung=f"r{n}", image_latency=latency_stats([10.0 + i % 7 for i in range(n)]).to_dict(),
                        step_ms={"median_ms": 1.0}) for n in ns]
    rungs.append(RungResult(rung="broken", status="error", error="RuntimeError: x"))
    return LadderResult(LadderOptions(rungs=("bf16",), reference="bf16"), rungs, {})


def test_table_reports_each_percentile_only_from_enough_runs():
    from fluxperf.measure.ladder_report import markdown, table

    df = table(_result_with_runs(9, 10, 100)).set_index("rung")
    assert pd.isna(df.loc["r9", "image_p90_ms"]) and df.loc["r9", "image_p50_ms"] == pytest.approx(12.0)
    assert df.loc["r10", "image_p90_ms"] == pytest.approx(15.1) and pd.isna(df.loc["r10", "image_p99_ms"])
    assert df.loc["r100", "image_p99_ms"] == pytest.approx(16.0) and df.loc["r100", "image_runs"] == 100
    md = markdown(df.reset_index())
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| r")}
    assert "n/a (needs 10 runs)" in rows["r9"] and "n/a (needs 100 runs)" in rows["r10"]
    assert "n/a" not in rows["r100"] and "16.00" in rows["r100"]
    broken = next(line for line in md.splitlines() if line.startswith("| broken"))
    assert "n/a" not in broken  # a failed rung has no runs: blank, not "needs"
    assert "9/10/100 timed runs" in md and "numpy.percentile method='linear'" in md


@pytest.mark.parametrize("value", ["trace.txt", "trace.gz", "dir/"])
def test_trace_file_must_be_a_json_chrome_trace(value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ladder", "--trace-file", value])
    err = capsys.readouterr().err
    assert f"{value!r} is not allowed" in err and ".json or .json.gz" in err


def test_unwritable_trace_dir_is_refused_before_any_rung(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["ladder", "--rungs", "bf16", "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--trace-file", str(blocker / "trace.json.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "--trace-file" in err and "cannot write" in err and "[ladder]" not in err


def test_a_failing_rung_is_reported_and_fails_the_run(tmp_path):
    """The library records a rung apply() refuses (the CLI refuses it up front: test_gpu_only_rungs_...)."""
    from fluxperf.measure.ladder_report import write_outputs
    from fluxperf.measure.ladder_run import LadderOptions, run_ladder

    out = tmp_path / "ladder"
    result = run_ladder(LadderOptions(rungs=("bf16", "float8_only"), rounds=1, step_rounds=1, device="cpu"),
                        progress=lambda m: None)
    assert not result.ok
    write_outputs(result, out)
    df = pd.read_csv(out / "ladder.csv")
    row = df.set_index("rung").loc["float8_only"]
    assert row["status"] == "error" and row["error"].startswith("UnavailableError: ")
    if probe("torchao"):  # installed: refused for the hardware (float8 matmuls need CUDA)
        assert "float8" in row["error"] and "CUDA" in row["error"], row["error"]
    else:  # an environment with only .[test]: refused for the package, with the install hint
        assert "torchao is not available" in row["error"] and install_hint("torchao") in row["error"], row["error"]
    md = (out / "ladder.md").read_text()
    bf16 = next(line for line in md.splitlines() if line.startswith("| bf16"))
    failed = next(line for line in md.splitlines() if line.startswith("| float8_only"))
    assert "nan" not in bf16 + failed and bf16.split("|")[3].strip() == "1"  # whole run count, not 1.00
    assert failed.split("|")[3].strip() == "-"  # missing: "-", not nan
    assert "against the reference rung bf16" in md


def test_unknown_rung_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ladder", "--rungs", "bf16,turbo"])
    err = capsys.readouterr().err
    assert "'bf16,turbo' is not allowed" in err and "Fix: drop ['turbo']" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "fluxperf", "ladder", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--rungs" in out.stdout and "--trace-file" in out.stdout
    text = " ".join(out.stdout.split())
    assert "p99: 100" in text and "--rounds" in text  # --rounds: the old name of --runs
