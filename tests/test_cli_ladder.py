"""`fluxperf ladder` end to end on the tiny model (the README's main command, reduced to eager rungs)."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from fluxperf.cli import build_parser, main
from fluxperf.optional import install_hint, probe


def test_ladder_writes_csv_json_and_pngs(tmp_path):
    out = tmp_path / "ladder"
    code = main(["ladder", "--rungs", "baseline,bf16,fused_qkv", "--rounds", "2", "--step-rounds", "2",
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    df = pd.read_csv(out / "ladder.csv")
    assert list(df["rung"]) == ["baseline", "bf16", "fused_qkv"] and (df["status"] == "ok").all()
    assert (df["image_median_ms"] > 0).all() and (df["step_median_ms"] > 0).all()
    record = json.loads((out / "ladder.json").read_text())
    assert record["ok"] and record["environment"]["versions"]["torch"]
    assert record["options"]["reference"] == "bf16" and record["rungs"][1]["psnr_db"] == "inf"
    assert 20 < record["rungs"][0]["psnr_db"] < 100  # fp32 vs bf16: close, not identical
    assert record["rungs"][2]["applied"]["qkv_fused"] is True
    for name in ("baseline", "bf16", "fused_qkv", "ladder"):
        assert Image.open(out / f"{name}.png").size[0] > 0


def test_a_failing_rung_is_reported_and_fails_the_run(tmp_path):
    out = tmp_path / "ladder"
    code = main(["ladder", "--rungs", "bf16,float8_only", "--rounds", "1", "--step-rounds", "1",
                 "--out", str(out), "--device", "cpu"])
    assert code == 1
    df = pd.read_csv(out / "ladder.csv")
    row = df.set_index("rung").loc["float8_only"]
    assert row["status"] == "error" and row["error"].startswith("UnavailableError: ")
    if probe("torchao"):  # installed: refused for the hardware (float8 matmuls need CUDA)
        assert "float8" in row["error"] and "CUDA" in row["error"], row["error"]
    else:  # an environment with only .[test]: refused for the package, with the install hint
        assert "torchao is not available" in row["error"] and install_hint("torchao") in row["error"], row["error"]


def test_unknown_rung_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ladder", "--rungs", "bf16,turbo"])
    err = capsys.readouterr().err
    assert "'bf16,turbo' is not allowed" in err and "Fix: drop ['turbo']" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "fluxperf", "ladder", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--rungs" in out.stdout
