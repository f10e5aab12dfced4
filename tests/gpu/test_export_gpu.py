"""torch.export + AOTInductor round trip of the tiny FLUX pipeline on a GPU, through the public apply_export.

Run: pytest -m gpu tests/gpu/test_export_gpu.py -s     (about 2-3 minutes: three AOTI builds of tiny modules)
The full-size transformer round trip is scripts/bench_export.py.
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.export,
    pytest.mark.numerics,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="AOTInductor export needs a CUDA GPU; run `pytest -m gpu` on the H100"),
]

# fp32 tiny model: the package runs Inductor's kernels, eager runs ATen's; with TF32 off both are fp32 and agree
# to ~1e-6 relative (measured on CPU AOTI: 1.8e-5 max abs on O(1) outputs). 1e-4 leaves a 10x+ margin and still
# catches wrong weights, wrong input order or a stale graph (errors of order 1).
REL_TOL = 1e-4
SPECS = [("dev", 1024, 1024, 1), ("dev", 768, 1360, 2)]
TEXT_LEN = 64


def rel_err(out, ref) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.fixture(scope="module")
def pipe():
    pytest.importorskip("diffusers")
    from fluxperf.models import build_pipeline

    return build_pipeline("dev", "tiny", device="cuda", dtype="float32", text_encoders=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("aoti")


def _recipe(vae: bool):
    from fluxperf.recipe import Recipe

    return Recipe.from_dict({"name": "export-test", "dtype": "float32", "export": {"enabled": True, "vae": vae}})


def _spec(variant, h, w, b):
    from fluxperf.shapes import ShapeSpec

    return ShapeSpec(variant, h, w, b, text_len=TEXT_LEN)


@pytest.mark.parametrize("variant,h,w,b", SPECS)
def test_aoti_round_trip_matches_eager_and_reuses_cache(pipe, cache_dir, variant, h, w, b):
    from fluxperf.export import apply_export, remove_export
    from fluxperf.model_configs import dims_of_pipeline
    from fluxperf.shapes import transformer_inputs, vae_latents

    spec, dims, with_vae = _spec(variant, h, w, b), dims_of_pipeline(pipe), (h, w) == (1024, 1024)
    inputs = transformer_inputs(spec, dims, device="cuda", dtype=torch.float32)
    latents = vae_latents(spec, dims, device="cuda", dtype=torch.float32)
    with torch.no_grad():
        ref = pipe.transformer(**inputs)[0]
        ref_image = pipe.vae.decode(latents, return_dict=False)[0]

    start = time.perf_counter()
    report = apply_export(pipe, _recipe(with_vae), spec, cache_dir=cache_dir)
    first_s = time.perf_counter() - start
    try:
        assert report["cache"]["transformer"] == "miss" and report["cudagraphs"] is True
        runner = report["runners"]["transformer"]
        with torch.no_grad():
            out = pipe.transformer(**inputs)[0]
            again = pipe.transformer(**transformer_inputs(spec, dims, device="cuda", dtype=torch.float32, seed=1))[0]
        assert rel_err(out, ref) < REL_TOL, rel_err(out, ref)
        assert rel_err(again, out) > 1e-2  # new values went through the same graph, not a stale result
        assert runner.stats.recorded == 1 and runner.stats.replays == 2
        if with_vae:
            image = pipe.vae.decode(latents, return_dict=False)[0]
            assert rel_err(image, ref_image) < REL_TOL, rel_err(image, ref_image)
    finally:
        remove_export(pipe)

    start = time.perf_counter()
    second = apply_export(pipe, _recipe(with_vae), spec, cache_dir=cache_dir)
    second_s = time.perf_counter() - start
    try:
        assert set(second["cache"].values()) == {"hit"} and second["packages"] == report["packages"]
        with torch.no_grad():
            out2 = pipe.transformer(**inputs)[0]
        assert rel_err(out2, ref) < REL_TOL
    finally:
        remove_export(pipe)
    print(f"\n{spec.key()}: first apply {first_s:.1f} s (build {report['build_s']}, load {report['load_s']}), "
          f"cached apply {second_s:.2f} s (load {second['load_s']})")
    assert second_s < first_s


def test_pipeline_runs_the_packages(pipe, cache_dir):
    """The unchanged pipeline call goes through both packages under CUDA graphs: one graph, one replay per step."""
    from fluxperf.export import apply_export, remove_export

    spec = _spec("dev", 1024, 1024, 1)
    g = torch.Generator().manual_seed(0)
    call = dict(prompt_embeds=torch.randn(1, TEXT_LEN, 32, generator=g).cuda(),
                pooled_prompt_embeds=torch.randn(1, 32, generator=g).cuda(), height=1024, width=1024,
                num_inference_steps=3, guidance_scale=3.5, output_type="pt")
    ref = pipe(**call, generator=torch.Generator("cuda").manual_seed(1)).images
    report = apply_export(pipe, _recipe(True), spec, cache_dir=cache_dir)
    try:
        out = pipe(**call, generator=torch.Generator("cuda").manual_seed(1)).images
        t_stats, v_stats = report["runners"]["transformer"].stats, report["runners"]["vae_decoder"].stats
    finally:
        remove_export(pipe)
    assert (t_stats.recorded, t_stats.replays) == (1, 3) and (v_stats.recorded, v_stats.replays) == (1, 1)
    assert rel_err(out, ref) < 10 * REL_TOL, rel_err(out, ref)  # 3 denoising steps compound the per-step error
