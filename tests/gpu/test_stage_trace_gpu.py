"""GPU tier: stage regions and the profiler trace on CUDA (issue 15.4).

On the full-size synthetic schnell pipeline at 1024x1024 (bf16 eager, and the compiled rung):
(a) the Chrome trace has each region once per call (denoising_step once per step) and the CUDA kernels, with
    the denoising_step ranges on the GPU timeline too (the profiler's gpu_user_annotation);
(b) the CUDA-event breakdown of timed calls agrees with the whole call timed by fluxperf.bench.timing (CUDA events)
    and puts most of the time in the denoising steps;
(c) on a torch.compile'd transformer the regions cause no recompile (they wrap the scheduler, VAE and image
    processor, never the compiled module).

Run: python -m pytest -m gpu -p no:cacheprovider -rs tests/gpu/test_stage_trace_gpu.py (about 2-4 minutes on an H200).
"""

from __future__ import annotations

import pytest
import torch
from root_conftest import recipe_marks

from fluxperf.measure.stage_regions import stage_regions
from fluxperf.measure.trace import read_trace, region_counts, traced

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA kernels, CUDA events)")]

STEPS = 4
SIDE = 1024


@pytest.fixture(scope="module", params=[pytest.param(n, marks=recipe_marks(n)[0]) for n in ("bf16", "compile")])
def warm(request):
    """(rung, pipe, stack, call): the rung applied to a full-size pipeline on CUDA, warmed up (compiled) twice."""
    from fluxperf.ladder import recipe_from
    from fluxperf.measure.ladder_run import image_call
    from fluxperf.measure.runner import prepared
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec, initial_latents, stand_in_prompt_embeds

    _, missing = recipe_marks(request.param, check=True)
    if missing:
        pytest.skip(missing)
    spec = ShapeSpec("schnell", SIDE, SIDE, 1)
    with prepared("schnell", "full", recipe_from(request.param), device="cuda", spec=spec, steps=STEPS) as run:
        pipe = run.pipe
        dims, dtype = dims_of_pipeline(pipe), pipe.transformer.dtype
        embeds = stand_in_prompt_embeds(spec, dims, seed=0, device="cuda", dtype=dtype)
        call = image_call(pipe, "schnell", spec, steps=STEPS, seed=0, embeds=embeds,
                          latents=initial_latents(spec, dims, 0, device="cuda", dtype=dtype))
        call()
        call()
        torch.cuda.synchronize()
        yield request.param, pipe, run.stack, call


def test_cuda_trace_has_regions_and_kernels(warm, tmp_path):
    _, pipe, _, call = warm
    path = tmp_path / "trace.json.gz"
    with traced(pipe, path, device="cuda"):
        call()
    assert region_counts(path) == {"prompt_encoding": 1, "denoising_step": STEPS, "decoding": 1,
                                   "postprocessing": 1, "pil_conversion": 1}
    events = read_trace(path)["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    gpu_steps = [e for e in events if e.get("cat") == "gpu_user_annotation" and e.get("name") == "denoising_step"]
    assert len(kernels) > 100, f"{len(kernels)} CUDA kernels in the trace"
    assert len(gpu_steps) == STEPS, f"{len(gpu_steps)} denoising_step ranges on the GPU timeline"


def test_cuda_event_breakdown_matches_the_timed_call(warm):
    from fluxperf.bench.timing import time_fn

    _, pipe, _, call = warm
    with stage_regions(pipe, device="cuda") as rec:
        t = time_fn(rec.timed(call), warmup=0, rounds=5, device="cuda")
    b = rec.breakdown()
    m = b["median_ms"]
    assert b["clock"] == "cuda_events" and b["runs"] == 5 and len(b["denoising_step_median_ms"]) == STEPS
    assert m["total"] == pytest.approx(t.median_ms, rel=0.1), (m, t.samples_ms)
    assert m["denoising"] > m["decoding"] > 0 and m["denoising"] > 0.5 * m["total"], m
    assert m["pil_conversion"] <= m["postprocessing"] and m["other"] > -0.01 * m["total"], m


def test_regions_cause_no_recompile(warm, tmp_path):
    name, pipe, stack, call = warm
    before = stack.recompiles
    with traced(pipe, tmp_path / "t.json.gz", device="cuda"):
        call()
    with stage_regions(pipe, device="cuda") as rec:
        rec.timed(call)()
    assert stack.recompiles == before, f"{name}: {before} -> {stack.recompiles}"

