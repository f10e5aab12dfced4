"""torch.export + AOTInductor round trips on a GPU, each in its own subprocess (scripts/probes/diag_export.py stages).

An AOTInductor package is native code loaded into the process: when it crashes (segfault in a load, a constant
update or a CUDA-graph capture), it takes the whole interpreter with it. So every round trip here runs as one
stage of scripts/probes/diag_export.py in a fresh `python -X faulthandler` process; a crash fails that one test with the
signal, the last step reached and the stage's output, and the rest of the tier keeps running.

Stages run with the system libstdc++ preloaded (diag_export.stage_env_vars -> fluxperf.steps.export.loader.preload_env),
as scripts/tiers/device-env.sh does for the whole tier; one test runs a stage without it and requires a clear refusal
or a working load, never a crash.

Run: pytest -m gpu tests/gpu/test_export_gpu.py      (about 3 minutes: small AOTI builds of tiny modules)
Diagnose a crash: python scripts/probes/diag_export.py      (all stages, JSON summary in $OUT)
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.export,
    pytest.mark.numerics,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="AOTInductor export needs a CUDA GPU; run `pytest -m gpu` on the H100"),
]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probes" / "diag_export.py"
# fp32 tiny model, TF32 off in the stages: the package runs Inductor's kernels, eager runs ATen's; measured on CPU
# AOTI: 1.8e-5 max abs on O(1) outputs. 1e-4 relative still catches wrong weights, input order or a stale graph
# (errors of order 1). Pipeline: 2 denoising steps compound the per-step error.
REL_TOL, PIPE_TOL = 1e-4, 1e-3
TEXT_LEN = 64
STAGE_TIMEOUT_S = 300


def _diag():
    spec = importlib.util.spec_from_file_location("diag_export", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Packages and Inductor caches shared by this module's stages (fresh per session)."""
    return tmp_path_factory.mktemp("aoti-stages")


def stage_record(stage: str, work, *, spec: str = "dev:1024x1024:1", weights: str = "user",
                 preload: bool = True) -> dict:
    """Run one diag stage in a subprocess (with or without the libstdc++ preload); its parse_child record."""
    diag = _diag()
    cmd = diag.stage_command(stage, work, spec=spec, weights=weights, text_len=TEXT_LEN,
                             hang_dump_s=STAGE_TIMEOUT_S - 10)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=diag.stage_env_vars(work, preload=preload),
                              timeout=STAGE_TIMEOUT_S)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = None, str(exc.stdout or "") + str(exc.stderr or "")
    return diag.parse_child(stage, rc, text, 0.0)


def run_stage(stage: str, work, *, spec: str = "dev:1024x1024:1", weights: str = "user") -> dict:
    """Run one diag stage; fail (not crash) on a signal, timeout or exception, with its output. Its RESULT."""
    rec = stage_record(stage, work, spec=spec, weights=weights)
    if rec["status"] not in ("ok", "wrong results"):
        pytest.fail(f"stage {stage} ({spec}, weights={weights}): {rec['status']} after step {rec['last_step']!r}.\n"
                    f"Output tail:\n{rec['tail']}", pytrace=False)
    return rec["result"]


@pytest.mark.parametrize("stage", ["linear_so", "linear_user", "linear_copy", "linear_so_graph", "linear_user_graph"])
def test_small_package_round_trip(work, stage):
    """A 2-layer MLP with a buffer: every way of giving a package its weights, with and without a CUDA graph."""
    res = run_stage(stage, work)
    assert res["max_abs_err"] < 1e-4 and res["max_abs_err_2"] < 1e-4, res
    if stage.endswith("_graph"):
        assert res["plain_err"] < 1e-4
        assert res["graph_stats"] == {"recorded": 1, "replays": 2, "evictions": 0, "cached": 1}


@pytest.mark.parametrize("spec", ["dev:1024x1024:1", "dev:256x384:2"])
def test_apply_export_round_trip_under_cudagraphs(work, spec):
    """The public path: apply_export (miss), forward and decode vs eager, pipeline call, re-apply (hit)."""
    res = run_stage("pipeline", work, spec=spec)
    assert res["cache"] == {"transformer": "miss", "vae_decoder": "miss"} and res["weights"] == "user"
    assert res["rel_err"] < REL_TOL and res["rel_err_2"] < REL_TOL, res
    assert res["new_values_differ"] > 1e-2  # new values went through the same graph, not a stale result
    assert res["vae_rel_err"] < REL_TOL, res
    assert res["pipe_rel_err"] < PIPE_TOL, res
    assert res["t_stats_calls"] == {"recorded": 1, "replays": 2, "evictions": 0, "cached": 1}
    assert (res["t_stats"]["recorded"], res["t_stats"]["replays"]) == (1, 4)  # + one replay per denoising step
    assert (res["v_stats"]["recorded"], res["v_stats"]["replays"]) == (1, 2)
    assert res["cache_2"] == {"transformer": "hit", "vae_decoder": "hit"} and res["rel_err_reload"] < REL_TOL
    assert res["apply_s_2"] < res["apply_s"]
    assert res["problems"] == []


def test_weights_in_package_fallback_under_cudagraphs(work):
    """weights='so' (FLUXPERF_EXPORT_WEIGHTS=so): the package carries its weights; same numerics under graphs."""
    res = run_stage("flux_so_graph", work)
    assert res["cache"] == "miss"
    assert max(res["rel_err"], res["graph_rel_err"], res["graph_rel_err_2"]) < REL_TOL, res
    assert res["graph_stats"]["recorded"] == 1 and res["graph_stats"]["replays"] == 2


def test_replaced_weights_are_followed_or_refused(work):
    """Issue 13.4: load_state_dict(assign=True) after export. weights='user': the package follows the new weights
    (constants re-pointed, the CUDA graph re-captured); weights='so' (a snapshot inside the package): refused."""
    res = run_stage("weights_replaced", work)
    assert res["user_rel_err_before"] < REL_TOL and res["user_rel_err_after"] < REL_TOL, res
    assert res["user_rel_err_vs_old"] > 1e-2, res  # the new weights really change the output
    assert res["user_graph_stats"]["recorded"] == 2, res  # captured again after the refresh
    assert "WeightsReplacedError" in res["so_error"] and "remove_export" in res["so_error"], res
    assert res["problems"] == []


def test_load_without_the_preload_is_refused_or_works_never_crashes(work):
    """Issue 14.1: without LD_PRELOAD a package whose wrapper carries its own libstdc++ is refused with the fix
    (LibstdcxxPreloadError naming the LD_PRELOAD line); one that does not, loads. A signal is a failure."""
    rec = stage_record("linear_user", work, preload=False)
    if rec["status"] == "exception":
        error = rec["result"]["exception"]
        assert error.startswith("LibstdcxxPreloadError") and "LD_PRELOAD=" in error and "libstdc++" in error, rec
    else:
        assert rec["status"] == "ok", f"{rec['status']} after step {rec['last_step']!r}:\n{rec['tail']}"
