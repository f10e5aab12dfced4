"""The CUDA-only part of the recipe space on the tiny model (issue 13, item 9); the CPU part and the validation of
every combination are in tests/test_recipe_space.py.

Part A (eager): every attention backend (fp8 scalings included) x fused QKV x float8 granularity in bf16 — each
accepted combination runs close to the bf16 SDPA eager forward, or apply() refuses it for a package or hardware this
machine lacks (aiter on NVIDIA, FA3 not installed), never for anything the recipe alone decides.
Part B (Inductor on CUDA): max-autotune-no-cudagraphs with the inductor flags plus two composites, each a 3-step image
close to the eager image (the CUDA-graph-tree modes are refused: see recipe_rules._rule_no_cudagraph_tree_modes).
Export is covered by tests/gpu/test_export_gpu.py (AOTInductor builds take minutes).

Run: pytest -m gpu tests/gpu/test_recipe_space_gpu.py --durations=0   (target: about a minute on an H100/H200)
Measured errors go to $OUT/recipe-space-gpu.json when $OUT is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fluxperf.apply import apply
from fluxperf.errors import UnavailableError
from fluxperf.measure.metrics import relative_error
from fluxperf.optional import probe
from fluxperf.recipe import FP8_BACKENDS, Recipe
from fluxperf.recipe_space import AXES, combinations, judge

pytestmark = pytest.mark.gpu

# Ceilings on ||out - ref|| / ||ref|| against the bf16 SDPA eager forward of the same tiny model. bf16 and fp8
# attention: the model-level ceilings of tests/gpu/test_attention_gpu.py (measured on a FLUX-sized block on the
# H100); float8 Linear layers: PROVISIONAL (fp8 e4m3 keeps 3 mantissa bits) until measured on the GPU; the same
# ceiling holds int8 Linear layers (per-token/per-channel int8: ~0.7 % per layer measured on CPU).
BF16_REL_ERR_MAX = 0.01
FP8_ATTENTION_REL_ERR_MAX = 0.015
FLOAT8_LINEAR_REL_ERR_MAX = 0.1
COMPILED_IMAGE_REL_ERR_MAX = 0.02  # PROVISIONAL: Inductor's fused bf16 kernels vs eager, 3-step 64x64 image
STEPS = 3


def _ceiling(r: Recipe) -> float:
    ceiling = FP8_ATTENTION_REL_ERR_MAX if r.attention.backend in FP8_BACKENDS else BF16_REL_ERR_MAX
    return ceiling + (FLOAT8_LINEAR_REL_ERR_MAX if r.quantize.enabled else 0.0)


def _cuda_part():
    axes = {**AXES, "dtype": tuple(v for v in AXES["dtype"] if v[0] == "bfloat16"), "compiler": AXES["compiler"][:1],
            "flags": AXES["flags"][:1], "cache": AXES["cache"][:1]}
    return [(data, verdict) for _, data in combinations(axes) for verdict in [judge(data)]]


CUDA_PART = _cuda_part()


@pytest.fixture(scope="module")
def measured():
    record: dict[str, dict] = {}
    yield record
    out = os.environ.get("OUT")
    if record and out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "recipe-space-gpu.json").write_text(json.dumps(record, indent=2, sort_keys=True))


def _fresh(variant="dev"):
    from fluxperf.model.build import build_pipeline

    pipe = build_pipeline(variant, "tiny", device="cuda", dtype="bfloat16", text_encoders=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(pipe):
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec, transformer_inputs

    return transformer_inputs(ShapeSpec("dev", 64, 64, text_len=16), dims_of_pipeline(pipe), device="cuda",
                              dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def eager_forward():
    pipe = _fresh()
    with torch.inference_mode():
        return pipe.transformer(**_inputs(pipe))[0].float()


def _refusal_is_about_this_machine(recipe: Recipe, message: str) -> bool:
    """aiter needs ROCm; FA3 needs its package (and sm90): the only apply()-time refusals a valid recipe may get."""
    backend = recipe.attention.backend
    if "dtype" in message:
        return False  # the recipe's dtype is known before apply(): Recipe.validate must refuse it
    if backend == "aiter_fp8":
        return True
    if backend in ("fa3", "fa3_fp8"):
        return not probe("fa3") or torch.cuda.get_device_capability()[0] != 9
    return False


def test_every_cuda_part_combination_is_accepted():
    refused = [(d["name"], str(v)) for d, v in CUDA_PART if not isinstance(v, Recipe)]
    assert not refused and len(CUDA_PART) == 8 * 2 * 4  # backends x qkv x (none, float8 x2, int8)


@pytest.mark.parametrize("data", [d for d, v in CUDA_PART if isinstance(v, Recipe)], ids=lambda d: d["name"])
def test_cuda_part_runs_close_to_eager_or_is_refused_for_this_machine(data, eager_forward, measured):
    recipe = Recipe.from_dict(data)
    pipe = _fresh()
    try:
        stack = apply(pipe, recipe)
    except UnavailableError as exc:
        assert _refusal_is_about_this_machine(recipe, str(exc)), f"{data['name']}: {exc}"
        measured[data["name"]] = {"refused": str(exc)}
        pytest.skip(f"not on this machine: {exc}")
    with torch.inference_mode():
        out = pipe.transformer(**_inputs(pipe))[0].float()
    err = relative_error(out, eager_forward)
    measured[data["name"]] = {"rel_err": err, "ceiling": _ceiling(recipe),
                              "float8_linear_count": stack.float8_linear_count,
                              "attention": stack.attention_backend}
    assert torch.isfinite(out).all()
    assert stack.attention_backend == recipe.attention.backend and stack.qkv_fused == recipe.fuse_qkv
    quantized = (stack.step("quantize") or {}).get("quantized_count", 0)
    assert (quantized > 0) == recipe.quantize.enabled
    assert (stack.float8_linear_count > 0) == (recipe.quantize.kind == "float8")
    assert err <= _ceiling(recipe), (data["name"], err)


def _image(pipe):
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=g), "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}
    return pipe(height=64, width=64, num_inference_steps=STEPS, guidance_scale=3.5, output_type="np",
                generator=torch.Generator().manual_seed(0),
                **{k: v.to("cuda", torch.bfloat16) for k, v in embeds.items()}).images


@pytest.fixture(scope="module")
def eager_image():
    return _image(_fresh())


# reduce-overhead and max-autotune (CUDA graph trees) are refused by Recipe.validate since this test found them
# failing (regional) or 21 % off eager (whole) on the H200; tests/test_recipe_space.py checks the refusal.
COMPILED = [
    {"compile": {"enabled": True, "mode": "max-autotune-no-cudagraphs"}, "inductor_flags": {"enabled": True}},
    {"base": "float8_row", "attention": {"backend": "sdpa"}},  # compile + fused QKV + channels_last + float8 row
    {"base": "fa3_fp8", "attention": {"fp8_scaling": "per_head"}},  # compiled custom fp8 attention op
]


@pytest.mark.parametrize("data", COMPILED, ids=lambda d: json.dumps(d, separators=(",", ":")))
def test_compiled_cuda_modes_run_close_to_eager(data, eager_image, measured):
    from fluxperf.ladder import recipe_from

    recipe = recipe_from({**data, "name": "space"} if "base" in data else {**data, "dtype": "bfloat16"})
    pipe = _fresh()
    torch._dynamo.reset()
    try:
        try:
            apply(pipe, recipe)
        except UnavailableError as exc:
            assert _refusal_is_about_this_machine(recipe, str(exc)), exc
            pytest.skip(f"not on this machine: {exc}")
        first, again = _image(pipe), _image(pipe)  # the second call replays (CUDA graphs) what the first captured
    finally:
        torch._dynamo.reset()
    ceiling = COMPILED_IMAGE_REL_ERR_MAX + (FLOAT8_LINEAR_REL_ERR_MAX if recipe.quantize.enabled else 0.0)
    errs = [relative_error(first, eager_image), relative_error(again, eager_image)]
    measured[f"compiled:{json.dumps(data)}"] = {"rel_err": errs, "ceiling": ceiling}
    assert all(e <= ceiling for e in errs), errs
