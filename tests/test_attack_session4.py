"""Attack session 4: static float8 activation scales, nightly.sh --gpus, the kept-build cache and the mirror group,
with bad and edge-case inputs. Each test below the "bugs" headers failed on the code it was written against (one
bug each, fixed as its class: non-finite calibration data, re-quantization, option values in nightly.sh, kept-build
roots and rung directories, mirror misuse); the few under "correct behaviour" pinned what already worked."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluxperf.bench.build_cache import EXPORT_PACKAGES_ENV, build_cache, kept_build_dir, resumed_build
from fluxperf.errors import FluxperfError, RecipeError
from fluxperf.ladder import recipe_from
from fluxperf.parallel_launch import LaunchError
from fluxperf.parallel_mirror import drive, mirror_group
from fluxperf.recipe import QuantizeConfig, Recipe

ROOT = Path(__file__).resolve().parents[1]
STATIC = QuantizeConfig(kind="float8", granularity="tensor", activation_scale="static", calibration_calls=2)
needs_torchao = pytest.mark.skipif(not __import__("importlib").util.find_spec("torchao"), reason="needs torchao")


def _linear(in_f=32, out_f=32, **kw):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(in_f, out_f, **kw)).to(torch.bfloat16)


def _x(*shape, value=None):
    import torch

    return torch.full(shape, value, dtype=torch.bfloat16) if value is not None else torch.randn(*shape,
                                                                                                 dtype=torch.bfloat16)


def _static(module, calibrate):
    from fluxperf.steps.float8_static import quantize_float8_static

    return quantize_float8_static(module, STATIC, calibrate)


# == bugs: quantize.activation_scale / calibration_calls ============================================================
def test_calibration_calls_with_dynamic_scales_is_refused_not_silently_ignored():
    """calibration_calls=16 only means something with activation_scale='static' (as fp8_scaling only with an fp8
    backend, which IS refused): dynamic float8 ignores it without a word."""
    with pytest.raises(RecipeError, match=r"calibration_calls=16.*activation_scale.*Fix:"):
        Recipe.from_dict({"quantize": {"kind": "float8", "calibration_calls": 16}})


@needs_torchao
def test_an_infinite_calibration_activation_is_refused_not_turned_into_an_inf_scale():
    """An inf activation in calibration gives scale inf: the layer is converted and every later output is NaN."""
    module = _linear()
    with pytest.raises(FluxperfError, match=r"'0'.*inf"):
        _static(module, lambda: module(_x(2, 16, 32, value=float("inf"))))


@needs_torchao
def test_a_nan_calibration_activation_is_refused_not_dropped():
    """max(0.0, nan) == 0.0: a NaN activation is silently dropped, the scale falls to MIN_AMAX / 448 and every later
    activation saturates (outputs collapse to the bias)."""
    module = _linear()
    with pytest.raises(FluxperfError, match=r"'0'.*nan"):
        _static(module, lambda: module(_x(2, 16, 32, value=float("nan"))))


@needs_torchao
def test_a_layer_calibrated_at_two_input_ranks_is_skipped_or_runs_at_both():
    """record_input_amax keeps the LAST call's rank: a layer seen 3-D then 2-D gets a rank-2 scale, and its 3-D
    forward then dies in torchao with a bare AssertionError (scale.ndim == hp_tensor.ndim)."""
    module = _linear()
    report = _static(module, lambda: (module(_x(2, 16, 32)), module(_x(4, 32))))
    if "0" not in report["skipped"]:
        module(_x(2, 16, 32))
        module(_x(4, 32))


@needs_torchao
def test_a_linear_called_with_keyword_input_is_calibrated_not_an_index_error():
    """The pre-hook reads args[0]: a Linear called as linear(input=x) raises IndexError: tuple index out of range."""
    module = _linear()
    report = _static(module, lambda: module[0](input=_x(2, 16, 32)))
    assert report["float8_count"] == 1


@needs_torchao
def test_a_module_without_parameters_gives_an_empty_report_not_stopiteration():
    import torch

    module = torch.nn.Sequential(torch.nn.ReLU())
    report = _static(module, lambda: module(_x(2, 32)))
    assert report["linear_count"] == 0 and report["float8_count"] == 0


@needs_torchao
def test_quantizing_an_already_static_float8_module_again_is_a_clear_error_or_a_skip():
    """The second call dies inside torchao: IndexError: tuple index out of range (prototype_float8_tensor.py)."""
    module, x = _linear(), _x(2, 16, 32)
    _static(module, lambda: module(x))
    try:
        report = _static(module, lambda: module(x))
    except FluxperfError:
        return
    assert report["skipped"] == ["0"]


# == bugs: scripts/tiers/nightly.sh --gpus ==========================================================================
def _nightly(tmp_path, *args, env_extra=None):
    gpu, perf = tmp_path / "gpu-tier.sh", tmp_path / "perf-tier.sh"
    gpu.write_text('echo "fake numerics tier, args: $*"; exit 0\n')
    perf.write_text('echo "perf-tier args: $*"; exit 0\n')
    env = {**os.environ, "NIGHTLY_GPU_TIER": str(gpu), "NIGHTLY_PERF_TIER": str(perf), "OUT": str(tmp_path / "out"),
           "FLUXPERF_HISTORY": str(tmp_path / "history.jsonl"), "FLUXPERF_BASELINES": str(tmp_path / "baselines"),
           "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "FLUXPERF_NO_PRELOAD": "1", **(env_extra or {})}
    if "NIGHTLY_GPUS" not in (env_extra or {}):
        env.pop("NIGHTLY_GPUS", None)
    done = subprocess.run(["bash", str(ROOT / "scripts/tiers/nightly.sh"), "--skip-install", "--date", "2026-01-01",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return done, done.stdout + done.stderr


@pytest.mark.slow
def test_nightly_refuses_more_gpus_than_the_runner_shows_before_the_tiers_run(tmp_path):
    """--gpus 4 on a runner showing 0 GPUs: "tiers sharded over 4 GPU(s) (this runner shows 0)", both tiers get
    --gpus 4 (the real gpu-tier.sh then exits 2 after the nightly install: reported as a numerics failure)."""
    done, log = _nightly(tmp_path, "--gpus", "4")
    assert done.returncode == 64, log
    assert "fake numerics tier" not in log and "--gpus 4" in log and "Fix:" in log


def test_nightly_option_without_its_value_is_a_clear_refusal_not_unbound_variable(tmp_path):
    """`nightly.sh --out` (value forgotten): "line 50: $2: unbound variable", exit 1 (also --date, --group ...)."""
    done, log = _nightly(tmp_path, "--out")
    assert done.returncode == 64 and "unbound variable" not in log and "--out" in log, log


def test_a_bad_nightly_gpus_variable_is_named_as_the_variable(tmp_path):
    """NIGHTLY_GPUS=9 is refused as "--gpus '9'": an option the user never passed; the variable is not named."""
    done, log = _nightly(tmp_path, env_extra={"NIGHTLY_GPUS": "9"})
    assert done.returncode == 64 and "NIGHTLY_GPUS" in log, log


def test_nightly_accepts_gpus_equals_form_as_the_tiers_do(tmp_path):
    """gpu-tier.sh takes --gpus=N; nightly.sh says "unknown argument '--gpus=2' (see --help)"."""
    done, log = _nightly(tmp_path, "--gpus=1")
    assert "unknown argument" not in log and done.returncode == 0, log


# == bugs: fluxperf/bench/build_cache.py ===========================================================================
def test_a_blank_export_packages_variable_is_not_a_directory_named_by_spaces(tmp_path):
    """FLUXPERF_EXPORT_PACKAGES='   ' passes `not root`: the kept build goes to './   /inductor/export'."""
    try:
        where = kept_build_dir(recipe_from("export"), {EXPORT_PACKAGES_ENV: "   "})
    except FluxperfError as exc:
        assert EXPORT_PACKAGES_ENV in str(exc) and "Fix:" in str(exc)
        return
    assert where is None


def test_a_kept_build_root_under_a_file_is_refused_naming_the_variable(tmp_path):
    """<file>/sub passes the root check (it does not exist); build_cache then raises a raw NotADirectoryError."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    env = {EXPORT_PACKAGES_ENV: str(afile / "sub")}
    with pytest.raises(FluxperfError, match=rf"{EXPORT_PACKAGES_ENV}=.*Fix:"):
        with build_cache(recipe_from("export"), env):
            pass


def test_a_recipe_named_dot_does_not_share_the_other_rungs_kept_directory(tmp_path):
    """name '.' -> <root>/inductor/. (every rung's directory): another rung's files make it look resumed."""
    env = {EXPORT_PACKAGES_ENV: str(tmp_path)}
    (tmp_path / "inductor" / "export" / "fxgraph").mkdir(parents=True)
    dotted = recipe_from({"base": "compile_faithful", "name": "."})
    try:
        assert not resumed_build(dotted, env), kept_build_dir(dotted, env)
    except (FluxperfError, RecipeError) as exc:
        assert "Fix:" in str(exc)


# == bugs: fluxperf/parallel_mirror.py (module-level setups: the workers unpickle them by name) ====================
@contextlib.contextmanager
def _ok_setup(rank, world_size):
    yield {"ok": lambda: None}


@contextlib.contextmanager
def _enter_fails(rank, world_size):
    if rank != 0:
        raise RuntimeError(f"setup fails in rank {rank}")
    yield {"ok": lambda: None}


@pytest.mark.slow
def test_a_driver_used_after_its_mirror_block_is_refused_at_the_call():
    """driver.call after the block: accepted; the worker, back in its outer loop, dies unpacking the name
    ('ValueError: not enough values to unpack'), reported only at the next use of the group."""
    with contextlib.suppress(LaunchError), mirror_group(2, backend="gloo", timeout_s=60, stop_timeout_s=20) as group:
        with group.mirror(_ok_setup) as driver:
            driver.call("ok")
        with pytest.raises(LaunchError, match="mirror"):
            driver.call("ok")


@pytest.mark.slow
def test_a_nested_mirror_of_one_group_is_refused_before_anything_is_sent():
    """group.mirror inside group.mirror: accepted; the worker takes the ENTER message as a command name and dies
    with "command ('enter', <function ...>, ()) is not one of ['ok']"."""
    with contextlib.suppress(LaunchError), mirror_group(2, backend="gloo", timeout_s=60, stop_timeout_s=20) as group:
        with group.mirror(_ok_setup) as driver:
            driver.call("ok")
            with pytest.raises(LaunchError) as exc:
                with group.mirror(_ok_setup):
                    pass
            assert "Traceback" not in str(exc.value)  # refused here, not a worker's crash report


@pytest.mark.slow
def test_a_group_used_after_mirror_group_exited_says_it_is_closed():
    """The message is "mirror rank 1 of 2 (gloo) exited with code 0 before rank 0 stopped it": rank 0 DID stop it."""
    with mirror_group(2, backend="gloo", timeout_s=60, stop_timeout_s=20) as group:
        pass
    with pytest.raises(LaunchError, match="closed"):
        with group.mirror(_ok_setup):
            pass


@pytest.mark.slow
def test_a_worker_failing_in_its_setup_marks_the_group_broken():
    """The docstring: a failed setup marks the group broken so later mirrors name the first failure. A failure
    found by the exit check (after `yield`, outside the try) leaves broken=None; the next mirror then reports
    "exited with code 1 before rank 0 stopped it" instead of the setup's error."""
    with contextlib.suppress(LaunchError), mirror_group(2, backend="gloo", timeout_s=60, stop_timeout_s=20) as group:
        with pytest.raises(LaunchError, match="setup fails in rank 1"):
            with group.mirror(_enter_fails):
                time.sleep(1.5)
        assert group.broken is not None and "setup fails in rank 1" in group.broken


# == correct behaviour (pinned) ====================================================================================
def test_calibration_calls_bad_values_are_one_line_refusals_naming_value_rule_and_fix():
    for value in ("4", 4.0, True, -1, 0, 65, 10**9, None, float("nan")):
        with pytest.raises(RecipeError) as exc:
            Recipe.from_dict({"quantize": {"kind": "float8", "activation_scale": "static", "calibration_calls": value}})
        text = str(exc.value)
        assert f"calibration_calls={value!r}" in text and "[1, 64]" in text and "Fix:" in text and "\n" not in text


@needs_torchao
def test_a_calibration_that_raises_leaves_no_hooks_and_the_module_unconverted():
    module = _linear()

    def boom():
        module(_x(2, 16, 32))
        raise RuntimeError("calibration failed")

    with pytest.raises(RuntimeError, match="calibration failed"):
        _static(module, boom)
    assert not module[0]._forward_pre_hooks and type(module[0].weight).__name__ == "Parameter"


def test_nightly_bad_gpus_values_are_refused_before_anything_is_written(tmp_path):
    for value in ("", " 2", "02", "all ", "0", "9", "ALL", "--out"):
        done, log = _nightly(tmp_path, "--gpus", value)
        assert done.returncode == 64 and f"--gpus '{value}'" in log and "Fix: e.g. --gpus 2" in log, log
        assert not (tmp_path / "out").exists()


def test_mirror_launches_with_a_bad_process_count_are_refused_before_any_process_starts():
    for nprocs in (1, 9, "2", 2.0, True):
        with pytest.raises(LaunchError, match=r"2 to 8.*Fix:"):
            with drive(_ok_setup, nprocs=nprocs, backend="gloo"):
                pass


def test_ladder_refuses_the_static_float8_rung_on_cpu_in_one_line(tmp_path, no_model_build, capsys):
    from attack_helpers import _one_line_refusal

    line = _one_line_refusal(["ladder", "--rungs", "float8_static", "--device", "cpu", "--out", str(tmp_path / "o")],
                             capsys)
    assert "'float8_static'" in line and "CUDA GPU" in line and "Fix:" in line
