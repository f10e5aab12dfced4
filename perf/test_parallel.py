"""Context parallelism on 2 GPUs (issue 16; perf group `parallel`): the parallel rungs' transformer step, full-size
FLUX.1-schnell at 1024x1024, batch 1, and the single-GPU steps they scale from, measured in the same run.

The harness (fluxperf.bench.harness.Bench) times a function in this process, so this process is rank 0: the
module's `mirrors` fixture (fluxperf.parallel_mirror.mirror_group) starts rank 1 in a worker process once and keeps
one process group for every parallel rung (a second NCCL group in one process crashed on the H200s); for each rung
both ranks enter fluxperf.measure.parallel_bench.step_mirror (build, apply, seeded inputs), and every call rank 0
makes (warm-up, timed rounds, kernel counting, re-measurement) is preceded by a "step" command that makes rank 1
call too; a warm recompile sends "reset" first. A rung that fails breaks the group: the later parallel rungs fail
naming that failure instead of hanging at a collective. Rank 0's CUDA events time the step including its waits
for rank 1 at the collectives.

Each parallel benchmark stores `world_size`, `scaling_efficiency` = single-GPU step / (N x parallel step)
(fluxperf.parallel_launch.scaling_efficiency) against the single-GPU step of its base stack measured earlier in
this session (`scaling_reference`; None with the reason when that was not measured), and TFLOP/s and MFU per GPU
(the step's FLOPs / N against one GPU's measured bf16 peak).

Baselines: baselines/<gpu>x2/ (FLUXPERF_GPU_COUNT=2, set by `scripts/tiers/perf-tier.sh parallel --gpus 2`); a
session without it fails here rather than store 2-GPU times in the single-GPU baseline. Skips below 2 GPUs.
"""

from __future__ import annotations

import pytest
from root_conftest import recipe_marks

from fluxperf.ladder import PARALLEL_RUNGS, recipe_from, rung
from fluxperf.model.shapes import ShapeSpec

SPEC = ShapeSpec("schnell", 1024, 1024)  # perf/conftest.py's SPEC and STEP_ROUNDS
STEP_ROUNDS = 20
DEV, DEV_STEPS, IMAGE_ROUNDS = ShapeSpec("dev", 1024, 1024), 28, 8  # perf/test_variants.py's dev image
IMAGE_RUNGS = ("cp2_ulysses",)  # the dev 28-step image on 2 GPUs, against the single-GPU compile image
WORLD_SIZE = 2
MIRROR_TIMEOUT_S = 900  # a rank waiting longer at a collective (its peer failed or hangs) raises, never hangs
# single-GPU rung a parallel rung scales from (its stack without the parallel stage), where this group measures it
SINGLE_OF = {"cp2_ulysses": "compile", "cp2_ring": "compile", "cp2_ulysses_eager": "bf16"}
SINGLE_RUNGS = tuple(dict.fromkeys(SINGLE_OF.values()))
_single_ms: dict[str, float] = {}  # single-GPU rung -> median ms measured in this session


def _need_two_gpus_and_their_baseline() -> None:
    """Skip below 2 GPUs; fail when the session's baseline is not the 2-GPU one (FLUXPERF_GPU_COUNT)."""
    import torch

    from fluxperf.env import GPU_COUNT_ENV, gpu_count

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < WORLD_SIZE:
        pytest.skip(f"needs {WORLD_SIZE} CUDA GPUs (context parallelism, one process per GPU); this machine shows "
                    f"{count}")
    if gpu_count() != WORLD_SIZE:
        pytest.fail(f"{GPU_COUNT_ENV}={gpu_count()}: the parallel group's records belong in the {WORLD_SIZE}-GPU "
                    f"baseline. Fix: scripts/tiers/perf-tier.sh parallel --gpus {WORLD_SIZE} (or set "
                    f"{GPU_COUNT_ENV}={WORLD_SIZE}).", pytrace=False)


@pytest.fixture(autouse=True)
def two_gpus_with_their_baseline():
    _need_two_gpus_and_their_baseline()


@pytest.fixture(scope="module")
def mirrors():
    """One process group (this process rank 0, a mirroring worker per other GPU) for every parallel benchmark of
    the module: a second NCCL group in one process crashed on the H200s (fluxperf.parallel_mirror)."""
    from fluxperf.parallel_mirror import mirror_group

    _need_two_gpus_and_their_baseline()
    with mirror_group(WORLD_SIZE, timeout_s=MIRROR_TIMEOUT_S) as group:
        yield group


def _params(names):
    return [pytest.param(n, id=n, marks=[pytest.mark.perf_group("parallel"), *recipe_marks(n)[0]]) for n in names]


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("rung_name", _params(SINGLE_RUNGS))
def test_single_gpu_step(perf, rung_name):
    """The scaling reference: the rung on GPU 0 alone (as test_ladder's step), before the parallel steps."""
    extra = perf.transformer_step(rung_name)
    assert extra["rounds"] >= 10
    _single_ms[rung_name] = extra["median_ms"]


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("rung_name", _params(PARALLEL_RUNGS))
def test_parallel_step(request, benchmark, mirrors, rung_name):
    extra = parallel_step(request, benchmark, mirrors, rung_name)
    assert extra["rounds"] >= 10 and extra["world_size"] == WORLD_SIZE
    assert extra["applied"]["steps"]["parallel"]["dist_backend"] == "nccl"
    assert 0 < extra["metrics"]["mfu"] < 1.5, "MFU per GPU against the measured bf16 GEMM peak (fp8 may exceed 1)"
    if rung_name in SINGLE_OF and SINGLE_OF[rung_name] in _single_ms:
        assert 0 < extra["scaling_efficiency"] < 1.5, extra["scaling_efficiency"]


def parallel_step(request, benchmark, mirrors, rung_name: str) -> dict:
    """The rung's transformer step on both ranks (step_mirror), rank 0 timing; returns the benchmark's extra_info."""
    from fluxperf.bench.flops import step_flops
    from fluxperf.measure.parallel_bench import step_mirror

    extra = _mirrored_benchmark(
        request, benchmark, mirrors, rung_name, step_mirror, (SPEC,), "step",
        info={"spec": SPEC.key(), "flops_per": "GPU (the step's FLOPs / world_size)"},
        rounds=STEP_ROUNDS, warmup_rounds=3, flops=step_flops(SPEC).total / WORLD_SIZE)
    extra.update(_scaling(rung_name, extra["median_ms"]))
    return extra


def _mirrored_benchmark(request, benchmark, mirrors, rung_name: str, setup, args: tuple, command: str, info: dict,
                        **bench) -> dict:
    """Have the workers of `mirrors` (fluxperf.parallel_mirror.MirrorGroup) enter `setup(rank, world, rung, *args)`,
    enter it as rank 0, and measure its `command` with Bench (each call preceded by the workers' own; a warm
    recompile after "reset" on every rank); returns the benchmark's extra_info (+ mirrored_calls)."""
    import torch

    from fluxperf.bench.harness import Bench, timed_call
    from fluxperf.measure.runner import free_gpu

    recipe = recipe_from(rung_name)
    _, missing = recipe_marks(recipe, check=True)  # as perf/conftest.py's require_rung
    if missing:
        pytest.skip(missing)
    assert recipe.parallel.world_size == WORLD_SIZE, rung_name
    try:
        with mirrors.mirror(setup, rung_name, *args) as driver, setup(0, WORLD_SIZE, rung_name, *args) as mine:
            own = mine.commands[command]

            def call():
                driver.call(command)
                return own()

            def warm_compile() -> float:
                driver.call("reset")
                torch._dynamo.reset()
                return timed_call(call)

            first = timed_call(call)
            info = {"rung": rung_name, **info, "applied": mine.run.stack.to_dict(), "apply_s": mine.run.setup_s,
                    "slowdown_injected": mine.slowdown, "world_size": WORLD_SIZE}
            extra = Bench(request, benchmark).run(
                call, first_call_s=first, setup_s=mine.run.setup_s, info=info, dyn_before=mine.dyn_before,
                warm_compile=warm_compile if recipe.compile.enabled else None, **bench)
            extra["mirrored_calls"] = dict(driver.calls)
    finally:
        free_gpu()
    return extra


def _image_params(names):
    return [pytest.param(n, id=n, marks=[pytest.mark.perf_group("parallel"), pytest.mark.slow,
                                         *recipe_marks(n)[0]]) for n in names]


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("rung_name", _image_params(tuple(dict.fromkeys(SINGLE_OF[n] for n in IMAGE_RUNGS))))
def test_single_gpu_dev_image(perf, rung_name):
    """The image scaling reference: FLUX.1-dev 1024², 28 steps, on GPU 0 alone (as perf/test_variants.py's)."""
    extra = perf.image(rung_name, DEV, DEV_STEPS)
    assert extra["rounds"] >= 7
    _single_ms[f"image:{rung_name}"] = extra["median_ms"]


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("rung_name", _image_params(IMAGE_RUNGS))
def test_parallel_dev_image(request, benchmark, mirrors, rung_name):
    """FLUX.1-dev 1024², 28 steps, on 2 GPUs (published anchor: 1.63 s for dev/28 on 4 H100s with Ulysses)."""
    extra = parallel_image(request, benchmark, mirrors, rung_name)
    assert extra["rounds"] >= 7 and extra["world_size"] == WORLD_SIZE
    if extra["scaling_efficiency"] is not None:
        assert 0 < extra["scaling_efficiency"] < 1.5, extra["scaling_efficiency"]


def parallel_image(request, benchmark, mirrors, rung_name: str) -> dict:
    """The dev image as parallel_step measures the step: both ranks in image_mirror, rank 0 timing with Bench."""
    from fluxperf.measure.parallel_bench import image_mirror

    extra = _mirrored_benchmark(request, benchmark, mirrors, rung_name, image_mirror, (DEV, DEV_STEPS), "image",
                                info={"spec": DEV.key(), "steps": DEV_STEPS}, rounds=IMAGE_ROUNDS, warmup_rounds=1,
                                count_kernels=False)
    extra.update(_scaling(rung_name, extra["median_ms"], kind="image"))
    return extra


def _scaling(rung_name: str, parallel_ms: float, kind: str = "step") -> dict:
    """scaling_efficiency against the session's single-GPU step (or dev image) of the rung's base, or None with
    the reason."""
    from fluxperf.parallel_launch import scaling_efficiency

    single = SINGLE_OF.get(rung_name)
    key, test = (single, "test_single_gpu_step") if kind == "step" else (f"image:{single}", "test_single_gpu_dev_image")
    if single is None:
        return {"scaling_efficiency": None, "scaling_reference": f"none: the group measures no single-GPU "
                f"{rung(rung_name).name} stack without its parallel stage"}
    if key not in _single_ms:
        return {"scaling_efficiency": None, "scaling_reference": f"none: {test}[{single}] did not "
                "run before it in this session"}
    return {"scaling_efficiency": scaling_efficiency(_single_ms[key], parallel_ms, WORLD_SIZE),
            "scaling_reference": f"perf/test_parallel.py::{test}[{single}]",
            "single_gpu_median_ms": _single_ms[key]}
