"""scripts/probes/diag_export.py: a crashing AOTI stage is isolated in its subprocess and reported, not fatal."""

from __future__ import annotations


# -- scripts/probes/diag_export.py: a crashing stage is isolated and reported ------------------------------------------
def _diag():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "probes" / "diag_export.py"
    spec = importlib.util.spec_from_file_location("diag_export", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diag_stage_segfault_is_reported_not_fatal(tmp_path):
    import subprocess

    diag = _diag()
    proc = subprocess.run(diag.stage_command("segv", tmp_path, device="cpu"), capture_output=True, text=True,
                          env=diag.stage_env_vars(tmp_path), timeout=60)
    rec = diag.parse_child("segv", proc.returncode, proc.stdout + proc.stderr, 1.0)
    assert rec["status"] == "killed by SIGSEGV" and rec["last_step"] == "about to read address 0"
    assert "Fatal Python error: Segmentation fault" in rec["tail"] and "stage_segv" in rec["tail"]  # faulthandler
    assert rec["result"] is None


def test_diag_outcomes_and_their_meaning():
    diag = _diag()
    ok = diag.parse_child("linear_so", 0, 'STEP run\nSTEP done\nRESULT {"problems": []}', 2.0)
    wrong = diag.parse_child("flux_fp32", 0, 'STEP done\nRESULT {"problems": ["rel_err=1.4 > 0.0001"]}', 2.0)
    boom = diag.parse_child("linear_user", 3, 'STEP load\nTraceback\nRESULT {"exception": "RuntimeError: x"}', 2.0)
    hang = diag.parse_child("linear_copy", None, "STEP compile", 80.0)
    assert (ok["status"], wrong["status"], boom["status"], hang["status"]) == ("ok", "wrong results", "exception",
                                                                              "timeout")
    assert boom["last_step"] == "load" and hang["last_step"] == "compile"
    notes = diag.meaning({"linear_so": ok, "linear_user": boom, "linear_copy": hang})
    assert any("load_constants is the culprit" in n and "FLUXPERF_EXPORT_WEIGHTS=so" in n for n in notes)
    notes = diag.meaning({"linear_so": diag.parse_child("linear_so", -11, "STEP load", 1.0)})
    assert any("AOTI itself fails" in n for n in notes)
