"""Context parallelism (issue 16) on CPU: recipe fields and refusals, the stage's place, requirements, the launcher's
arguments and environment, baseline keying by GPU count, and diffusers' Ulysses on gloo with 2 real processes."""

from __future__ import annotations

import pytest

from fluxperf.apply import plan
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.ladder import PARALLEL_RUNGS, recipe_from, rung
from fluxperf.parallel_launch import MULTICAST_OFF, LaunchError, check_launch, scaling_efficiency, worker_env
from fluxperf.requirements import missing, requirements


@pytest.mark.parametrize("name", PARALLEL_RUNGS)
def test_parallel_rungs_run_parallel_before_compile(name):
    stages = plan(rung(name))
    assert "parallel" in stages and rung(name).parallel.world_size == 2
    if "compile" in stages:
        assert stages.index("parallel") < stages.index("compile")
    if "quantize" in stages:
        assert stages.index("quantize") < stages.index("parallel")


@pytest.mark.parametrize("changes, words", [
    ({"parallel": {"enabled": True}}, "nothing to split"),
    ({"parallel": {"enabled": True, "ring_degree": 2}}, "log-sum-exp"),
    ({"parallel": {"enabled": True, "ulysses_degree": 9}}, "parallel.ulysses_degree"),
    ({"base": "export", "parallel": {"enabled": True, "ulysses_degree": 2}}, "export.enabled=True"),
    ({"base": "flags", "cache_dit": {"enabled": True}, "parallel": {"enabled": True, "ulysses_degree": 2}},
     "cache_dit.enabled=True"),
    ({"base": "teacache", "parallel": {"enabled": True, "ulysses_degree": 2}}, "first_block_cache.enabled=True"),
    ({"base": "fa3_fp8", "parallel": {"enabled": True, "ulysses_degree": 2}}, "attention.backend='fa3_fp8'"),
])
def test_refused_combinations_name_the_rule_and_fix(changes, words):
    with pytest.raises(RecipeError) as exc:
        recipe_from(changes)
    assert words in str(exc.value) and "Fix:" in str(exc.value)


def test_composes_with_bf16_fused_qkv_compile_float8():
    r = recipe_from({"base": "float8_only", "fuse_qkv": True, "parallel": {"enabled": True, "ulysses_degree": 2}})
    assert plan(r) == ["dtype", "fuse_qkv", "quantize", "parallel", "compile"]


def test_requirements_name_the_gpu_count_and_cpu_refusal_matches_apply(tiny_pipe_factory):
    assert requirements("cp2_ulysses").hardware == ("gpus2",)
    lines = missing("cp2_ulysses_eager")
    assert len(lines) == 1 and "2 or more CUDA GPUs" in lines[0]
    from fluxperf.apply import apply

    pipe = tiny_pipe_factory("schnell", text_encoders=False)
    with pytest.raises(UnavailableError) as exc:  # no process group, no GPU: the same words as missing()
        apply(pipe, "cp2_ulysses_eager")
    assert exc.value.reason in lines[0] and exc.value.hint in lines[0]


def test_launcher_environment_keeps_multicast_off():
    env = worker_env(1, 2, 29555)
    assert env["RANK"] == env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["MASTER_PORT"] == "29555"
    assert MULTICAST_OFF == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                             "NVSHMEM_DISABLE_NVLS": "1"}
    assert all(env[k] == v for k, v in MULTICAST_OFF.items())


@pytest.mark.parametrize("nprocs, backend, error, words", [
    (1, "gloo", LaunchError, "2 to 8"), (9, "gloo", LaunchError, "2 to 8"), (True, "gloo", LaunchError, "2 to 8"),
    (2, "mpi", LaunchError, "'nccl' on GPUs"), (2, "nccl", UnavailableError, "0 CUDA GPU(s)"),
])
def test_launch_arguments_refused_before_any_process(nprocs, backend, error, words):
    with pytest.raises(error) as exc:
        check_launch(nprocs, backend)
    assert words in str(exc.value)


def test_scaling_efficiency():
    assert scaling_efficiency(100.0, 50.0, 2) == 1.0
    assert scaling_efficiency(100.0, 80.0, 2) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="world size >= 2"):
        scaling_efficiency(100.0, 80.0, 1)


def test_baseline_slug_keyed_by_gpu_count(monkeypatch):
    from fluxperf.env import GPU_COUNT_ENV, GPU_NAME_ENV, gpu_identity

    monkeypatch.setenv(GPU_NAME_ENV, "NVIDIA H200")
    assert gpu_identity().slug == "nvidia-h200"
    monkeypatch.setenv(GPU_COUNT_ENV, "2")
    assert gpu_identity().slug == "nvidia-h200x2" and gpu_identity().count == 2
    monkeypatch.setenv(GPU_COUNT_ENV, "two")
    with pytest.raises(ValueError, match="integer from 1 to 8"):
        gpu_identity()


@pytest.mark.slow
def test_ulysses_on_gloo_matches_the_single_process_transformer():
    """2 real processes (gloo), diffusers' enable_parallelism + Ulysses all-to-all, vs the unsplit forward."""
    from fluxperf.measure.parallel_run import transformer_vs_single
    from fluxperf.model.shapes import ShapeSpec
    from fluxperf.parallel_launch import launch

    out = launch(transformer_vs_single, {"base": "cp2_ulysses_eager", "dtype": "float32"}, "schnell", "tiny",
                 ShapeSpec("schnell", 64, 64), nprocs=2, backend="gloo")
    report = out["applied"]["steps"]["parallel"]
    assert (report["world_size"], report["ulysses_degree"], report["dist_backend"]) == (2, 2, "gloo")
    assert out["shape"] == [1, 16, 64]  # gathered back to the full sequence
    assert out["rel_err"] < 1e-5, out  # measured 1.3e-7 (float32; SDPA on half the heads per rank)


@pytest.mark.slow
def test_ladder_runs_a_parallel_rung_in_two_processes_on_gloo():
    """fluxperf ladder's route for context-parallel rungs: one process per rank (gloo on CPU), rank 0's RungResult
    comes back with the parallel stage's report and an image close to the one-process reference rung."""
    from fluxperf.measure.ladder_run import LadderOptions, run_ladder

    lines = []
    result = run_ladder(LadderOptions(rungs=("bf16", "cp2_ulysses_eager"), steps=2, rounds=1, step_rounds=1,
                                      warmup=0, device="cpu"), progress=lines.append)
    by = {r.rung: r for r in result.rungs}
    cp = by["cp2_ulysses_eager"]
    assert cp.status == "ok", cp.error
    assert cp.applied["world_size"] == 2 and cp.applied["steps"]["parallel"]["dist_backend"] == "gloo"
    assert cp.psnr_db > 30, cp.psnr_db  # bf16, the sequence split over 2 ranks vs one process: close, not equal
