"""Numerics thresholds (baselines/<gpu>/numerics.json, baselines/<family>/numerics.json): the checks fail what
they must, every field is validated, and a GPU the repository has never seen finds its architecture's file."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from fluxperf.cli import main
from fluxperf.errors import BaselineError
from fluxperf.measure import thresholds as th

ROOT = Path(__file__).resolve().parents[1] / "baselines"
H100 = "NVIDIA H100 80GB HBM3"
MEASURED = {"compile": {"psnr_db": 46.6, "ssim": 0.9997, "max_abs_error": 0.027, "forward_rel_err": 0.016,
                        "vae_rel_err": 0.0165}}


def test_check_psnr_and_rel_err_fail_below_and_pass_above():
    t = th.derive(MEASURED, gpu=H100)
    assert t.rungs["compile"].psnr_min_db == pytest.approx(43.6)
    assert t.check_psnr("compile", {"psnr_db": 46.0}) is None
    failure = t.check_psnr("compile", {"psnr_db": 12.0, "ssim": 0.5, "max_abs_error": 0.9})
    assert failure and "12.00 dB < threshold 43.60 dB" in failure
    assert t.check_psnr("compile", {"psnr_db": math.nan}) is not None  # NaN never passes
    assert t.check_psnr("compile", {"psnr_db": math.inf}) is None  # bit-identical images pass
    assert t.check_rel_err("compile", "forward", 0.02) is None
    assert "0.90000 > threshold" in t.check_rel_err("compile", "forward", 0.9)
    assert t.check_rel_err("compile", "vae", math.nan) is not None


def _copy_h100(tmp_path) -> Path:
    dst = tmp_path / "nvidia-h100-80gb-hbm3" / "numerics.json"
    dst.parent.mkdir(parents=True)
    shutil.copy(ROOT / "nvidia-h100-80gb-hbm3" / "numerics.json", dst)
    return dst


@pytest.mark.parametrize("rung_value", [{}, {"psnr_min_db": None}, {"psnr_min_db": -math.inf},
                                        {"forward_rel_err_max": 1e9}, {"psnr_min_db": "40"},
                                        {"psnr_min_db": True}, {"vae_rel_err_max": math.nan}])
def test_a_corrupt_rung_is_refused_not_passed(tmp_path, rung_value):
    path = _copy_h100(tmp_path)
    data = json.loads(path.read_text())
    rung = data["rungs"]["float8"]
    if rung_value == {}:
        data["rungs"]["float8"] = {}
    else:
        rung.update(rung_value)
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=r"rungs\.float8\."):
        th.load(path, expected_gpu=H100)


def test_the_gpu_field_must_name_the_folders_gpu(tmp_path):
    path = _copy_h100(tmp_path)
    data = json.loads(path.read_text())
    data["gpu"] = "NVIDIA H200"
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="does not name the GPU of its folder"):
        th.lookup(tmp_path, H100, "sm90")


def test_an_unknown_hopper_gpu_uses_the_sm90_family_file_and_says_why():
    t = th.lookup(ROOT, "NVIDIA H20", "sm90")
    assert t.path.endswith("sm90/numerics.json") and "architecture family sm90" in t.why
    assert {"compile", "fused_qkv", "channels_last", "fa3_fp8", "float8"} <= set(t.rungs)
    exact = th.lookup(ROOT, H100, "sm90")
    assert exact.path.endswith("nvidia-h100-80gb-hbm3/numerics.json") and "this GPU" in exact.why
    with pytest.raises(BaselineError, match="fluxperf baseline numerics"):
        th.lookup(ROOT, "NVIDIA B200", "sm100")


def test_cli_derives_a_family_file_from_the_worst_of_several_gpus(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(MEASURED))
    b.write_text(json.dumps({"compile": {**MEASURED["compile"], "psnr_db": 45.0, "forward_rel_err": 0.02}}))
    assert main(["baseline", "numerics", str(a), str(b), "--family", "sm90", "--root", str(tmp_path)]) == 0
    t = th.load(tmp_path / "sm90" / "numerics.json", family="sm90")
    assert t.rungs["compile"].psnr_min_db == pytest.approx(42.0)
    assert t.rungs["compile"].forward_rel_err_max == pytest.approx(0.03)
    b.write_text(json.dumps({"compile": {"psnr_db": 45.0}}))
    assert main(["baseline", "numerics", str(b), "--gpu", H100, "--root", str(tmp_path)]) == 12
    assert "b.json: compile.forward_rel_err = None is missing" in capsys.readouterr().err
