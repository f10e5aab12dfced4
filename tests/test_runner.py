"""fluxperf.measure.runner (the measuring protocol) and the example-input helpers it moved into fluxperf.model.shapes.

The protocol is run for real on tiny CPU pipelines: it times apply(), and it frees whatever happens — a failing
apply (after a real block cache was enabled) or a failing measurement still disables the cache, drops every
reference to the pipeline and calls the one GPU free.
"""

from __future__ import annotations

import gc
import time
import weakref

import pytest
import torch

from fluxperf.apply import STAGES, Stage
from fluxperf.ladder import recipe_from
from fluxperf.measure import runner
from fluxperf.model.configs import dims_of_pipeline, model_dims
from fluxperf.model.shapes import ShapeSpec, initial_latents, stand_in_prompt_embeds
from fluxperf.steps.caching.stats import active_cache

STEPS = 6
FBC = {"enabled": True, "threshold": 4.9}  # diffusers' first-block cache: no optional package needed


# -- the example inputs: the same tensors as the three copies they replace -------------------------------------
# Frozen copies of the code the helpers replaced (issue 18), kept as the specification of their values.
def _old_ladder_initial_latents(spec, dims, seed: int):  # fluxperf.measure.ladder_run.initial_latents
    h, w = spec.latent_hw
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((spec.batch, h * w, dims.in_channels), generator=g, dtype=torch.float32)


def _old_numerics_embeds(spec, dims):  # fluxperf.measure.numerics.fixed_inputs (PROMPT_SEED 1234)
    g = torch.Generator("cpu").manual_seed(1234)
    embeds = torch.randn((spec.batch, spec.text_tokens, dims.joint_attention_dim), generator=g)
    pooled = torch.randn((spec.batch, dims.pooled_projection_dim), generator=g)
    return embeds, pooled


def _old_perf_embeds(spec, dims):  # perf/conftest.PerfRunner._image (then .to("cuda", torch.bfloat16))
    g = torch.Generator("cpu").manual_seed(0)
    return (torch.randn(spec.batch, spec.text_tokens, dims.joint_attention_dim, generator=g),
            torch.randn(spec.batch, dims.pooled_projection_dim, generator=g))


def _old_tiny_runner_embeds():  # the root conftest's tiny_image_runner (tiny dims, 16 text tokens)
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 16, 32, generator=g), torch.randn(1, 32, generator=g)


@pytest.mark.parametrize("spec, seed", [(ShapeSpec("dev", 64, 48, 2), 7), (ShapeSpec("kontext", 32, 32), 0)])
def test_initial_latents_match_the_ladders_old_noise(spec, seed):
    dims = model_dims(spec.variant, "tiny")
    new = initial_latents(spec, dims, seed)
    assert new.dtype == torch.float32 and torch.equal(new, _old_ladder_initial_latents(spec, dims, seed))
    cast = initial_latents(spec, dims, seed, dtype=torch.bfloat16)
    assert torch.equal(cast, _old_ladder_initial_latents(spec, dims, seed).to("cpu", torch.bfloat16))


def test_initial_latents_pinned_values():
    """Values captured from ladder_run.initial_latents before it moved (a change of torch's RNG shows here too)."""
    x = initial_latents(ShapeSpec("dev", 64, 48, 2), model_dims("dev", "tiny"), 7)
    assert tuple(x.shape) == (2, 12, 64)
    assert x[0, 0, :3].tolist() == pytest.approx([-0.8201345205307007, 0.39563116431236267, 0.8989084959030151])
    assert x.double().sum().item() == pytest.approx(38.026949732215144, rel=1e-9)


@pytest.mark.parametrize("old, seed, spec", [
    (_old_numerics_embeds, 1234, ShapeSpec("schnell", 64, 64)),
    (_old_perf_embeds, 0, ShapeSpec("dev", 32, 48, 2)),
    (lambda spec, dims: _old_tiny_runner_embeds(), 0, ShapeSpec("dev", 64, 64, text_len=16)),
])
def test_stand_in_prompt_embeds_match_each_old_copy(old, seed, spec):
    dims = model_dims(spec.variant, "tiny")
    new = stand_in_prompt_embeds(spec, dims, seed=seed)
    embeds, pooled = old(spec, dims)
    assert torch.equal(new["prompt_embeds"], embeds) and torch.equal(new["pooled_prompt_embeds"], pooled)
    bf16 = stand_in_prompt_embeds(spec, dims, seed=seed, dtype=torch.bfloat16)
    assert torch.equal(bf16["prompt_embeds"], embeds.to(torch.bfloat16))


def test_stand_in_prompt_embeds_pinned_values():
    """numerics.fixed_inputs' embeddings for schnell 64x64 on the tiny model, captured before the move."""
    e = stand_in_prompt_embeds(ShapeSpec("schnell", 64, 64), model_dims("schnell", "tiny"), seed=1234)
    assert tuple(e["prompt_embeds"].shape) == (1, 256, 32) and tuple(e["pooled_prompt_embeds"].shape) == (1, 32)
    assert e["prompt_embeds"].double().sum().item() == pytest.approx(-91.53674989924184, rel=1e-9)
    assert e["pooled_prompt_embeds"].flatten()[:3].tolist() == pytest.approx(
        [1.1948692798614502, -1.5460410118103027, -1.3713152408599854])


def test_numerics_fixed_inputs_use_the_shared_helpers(tiny_schnell):
    from fluxperf.measure.numerics import NOISE_SEED, PROMPT_SEED, fixed_inputs

    inputs = fixed_inputs(tiny_schnell, ("schnell", 64, 64))
    dims = dims_of_pipeline(tiny_schnell)
    embeds, pooled = _old_numerics_embeds(inputs["spec"], dims)
    assert (PROMPT_SEED, NOISE_SEED) == (1234, 0)
    assert torch.equal(inputs["prompt_embeds"], embeds) and torch.equal(inputs["pooled_prompt_embeds"], pooled)
    assert torch.equal(inputs["noise"], _old_ladder_initial_latents(inputs["spec"], dims, NOISE_SEED))


# -- the protocol ---------------------------------------------------------------------------------------------
@pytest.fixture
def free_calls(monkeypatch):
    """Counts runner.free_gpu calls (the real one still runs)."""
    calls = []
    real = runner.free_gpu
    monkeypatch.setattr(runner, "free_gpu", lambda: (calls.append(1), real())[1])
    return calls


def _with_stage(monkeypatch, name: str, run, *, before: str | None = None) -> None:
    """Put a stage named `name` into apply's STAGES (before `before`, else last), wanted by every recipe."""
    from fluxperf import apply as apply_module

    stages = list(STAGES)
    index = next(i for i, s in enumerate(stages) if s.name == before) if before else len(stages)
    stages.insert(index, Stage(name, lambda r: True, run))
    monkeypatch.setattr(apply_module, "STAGES", tuple(stages))


def test_setup_time_is_the_apply_time(monkeypatch, free_calls):
    """setup_s is apply()'s wall time: a stage that takes 0.3 s shows up in it, the build does not."""
    _with_stage(monkeypatch, "slow", lambda ctx: (time.sleep(0.3), {"slept_s": 0.3})[1])
    spec = ShapeSpec("schnell", 64, 64)
    t0 = time.perf_counter()
    with runner.prepared("schnell", "tiny", recipe_from("fused_qkv"), device="cpu", spec=spec, steps=2) as run:
        inside = time.perf_counter() - t0
        assert run.stack.qkv_fused and run.stack.stage_names[-1] == "slow"  # the typed AppliedStack
        assert 0.3 <= run.setup_s < inside and 0 < run.build_s < inside - run.setup_s + 1e-3
        assert run.pipe.transformer.dtype == torch.bfloat16  # built in the recipe's dtype
        assert free_calls == []
    assert free_calls == [1] and run.pipe is None and run.stack is None


def test_a_failing_apply_disables_the_cache_and_frees(monkeypatch, free_calls):
    """apply() raises after the first-block cache stage enabled a real cache: the cache is off afterwards, the
    GPU free ran, and the error reaches the caller."""
    seen = []

    def fail(ctx):
        assert active_cache(ctx.pipe) == "first_block"  # the real cache is on when apply fails
        raise RuntimeError("stage failed on purpose")

    _with_stage(monkeypatch, "fail", fail)
    recipe = recipe_from({"base": "bf16", "first_block_cache": FBC})
    with pytest.raises(RuntimeError, match="on purpose"):
        with runner.prepared("dev", "tiny", recipe, device="cpu", steps=STEPS, before_apply=seen.append):
            pytest.fail("the block must not run when apply fails")
    pipe = seen[0]
    assert active_cache(pipe) is None and free_calls == [1]


def test_a_failing_measurement_disables_the_cache_and_frees(free_calls):
    """The block raises while the first-block cache apply() enabled is on: the protocol turns it off."""
    with pytest.raises(RuntimeError, match="measurement failed"):
        with runner.prepared("dev", "tiny", recipe_from({"base": "bf16", "first_block_cache": FBC}), device="cpu",
                             steps=STEPS) as run:
            pipe = run.pipe
            assert active_cache(pipe) == "first_block" and free_calls == []
            raise RuntimeError("measurement failed with the cache on")
    assert active_cache(pipe) is None and free_calls == [1]


def test_a_failing_measurement_drops_every_reference_to_the_pipeline(free_calls):
    """An error inside the block: the pipeline is collectable once the protocol exits (no frame of the failure's
    traceback keeps it), so the free really frees it."""
    holder = []

    def measure(run):
        pipe = run.pipe  # a local of a finished frame: the traceback keeps it unless the frames are cleared
        holder.append(weakref.ref(pipe))
        raise ValueError(f"measurement failed on {type(pipe).__name__}")

    with pytest.raises(ValueError, match="measurement failed") as info:
        with runner.prepared("dev", "tiny", recipe_from({"base": "bf16", "first_block_cache": FBC}), device="cpu",
                             steps=STEPS) as run:
            measure(run)
    gc.collect()
    assert holder[0]() is None, "the pipeline outlived the protocol"
    assert run.pipe is None and free_calls == [1] and info.value.__traceback__ is not None


def test_a_failing_build_still_frees(monkeypatch, free_calls):
    import fluxperf.model.build

    def broken(*args, **kwargs):
        raise OSError("no such checkpoint")

    monkeypatch.setattr(fluxperf.model.build, "build_pipeline", broken)
    with pytest.raises(OSError, match="no such checkpoint"):
        with runner.prepared("schnell", "tiny", None, device="cpu"):
            pytest.fail("unreachable")
    assert free_calls == [1]


def test_without_a_recipe_it_only_builds(free_calls):
    with runner.prepared("schnell", "tiny", None, device="cpu", dtype="float32") as run:
        assert run.stack is None and run.setup_s == 0.0 and run.pipe.transformer.dtype == torch.float32
    assert free_calls == [1]
