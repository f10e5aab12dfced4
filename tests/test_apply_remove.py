"""remove(pipe): apply()'s stages undone in reverse order (CPU, tiny pipelines), and what cannot be undone refused.

The tiny dev pipeline is built in float32, so recipes here keep dtype float32 (the dtype stage then changes nothing
and undoes exactly); a narrowing cast is the case remove() must refuse.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxperf import applied, remove
from fluxperf.apply import APPLIED_ATTR, NotUndoableError, apply
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.stages import STAGES

STEPS, WARMUP = 6, 2
# tiny random-weight blocks change their residual by ~0.4-0.9 per step: these thresholds cache every step they may
CACHE_DIT = {"enabled": True, "Fn": 1, "Bn": 0, "residual_diff_threshold": 9.0, "max_warmup_steps": WARMUP}
FBC = {"enabled": True, "threshold": 4.9}
CACHES = {"cache_dit": CACHE_DIT, "first_block_cache": FBC}


def _needs(step: str) -> None:
    if step == "cache_dit":
        pytest.importorskip("cache_dit", reason="needs cache-dit: pip install 'fluxperf[cache-dit]'")


@pytest.fixture
def dev(tiny_image_runner):
    """A fresh tiny dev pipeline, its runner and its uncached image; whatever a test leaves applied is removed."""
    pipe, run = tiny_image_runner("dev", STEPS)
    yield pipe, run, run()
    remove(pipe, partial=True)  # cache-dit patches the pipeline class: later pipelines need it off


def test_every_stage_says_how_it_is_undone_or_why_not():
    for stage in STAGES:
        assert (stage.undo is None) == bool(stage.irreversible), stage.name
    assert {s.name for s in STAGES if s.undo is None} == {"fuse_qkv", "quantize"}


def test_remove_on_a_pipeline_with_nothing_applied_is_a_no_op(tiny_pipe_factory):
    pipe = tiny_pipe_factory()
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    assert remove(pipe) is None and applied(pipe) is None
    assert all(torch.equal(v, before[k]) for k, v in pipe.transformer.state_dict().items())


@pytest.mark.parametrize("step", ["cache_dit", "first_block_cache"])
def test_remove_after_a_cache_restores_class_forward_and_a_fresh_pipelines_output(dev, tiny_image_runner, step):
    _needs(step)
    pipe, run, ref = dev
    t = pipe.transformer
    call, order = type(pipe).__call__, list(t._modules)
    stack = apply(pipe, {"dtype": "float32", step: CACHES[step]}, num_inference_steps=STEPS, variant="dev")
    assert applied(pipe) is stack and getattr(pipe, APPLIED_ATTR) is stack
    cached = run()
    assert np.abs(cached - ref).max() > 1e-3  # the cache really changed the image
    removal = remove(pipe)
    assert removal.undone == (step, "dtype") and removal.kept == {}
    assert applied(pipe) is None and not hasattr(pipe, APPLIED_ATTR)
    assert type(pipe).__call__ is call and list(t._modules) == order
    assert "forward" not in t.__dict__ and "check_inputs" not in pipe.__dict__
    assert not t._forward_hooks and not t._forward_pre_hooks and not t.is_cache_enabled
    fresh_pipe, fresh_run = tiny_image_runner("dev", STEPS)
    np.testing.assert_array_equal(run(), fresh_run())
    assert remove(pipe) is None  # a second remove: nothing left


def test_apply_remove_apply_another_recipe_gives_the_second_recipes_output(dev, tiny_image_runner):
    _needs("cache_dit")
    pipe, run, _ = dev
    apply(pipe, {"dtype": "float32", "channels_last": True, "cache_dit": CACHE_DIT}, num_inference_steps=STEPS,
          variant="dev")
    run()
    assert remove(pipe).undone == ("cache_dit", "channels_last", "dtype")
    assert pipe.vae.decoder.conv_in.weight.is_contiguous()  # channels_last undone
    second = {"dtype": "float32", "first_block_cache": FBC}
    stack = apply(pipe, second, num_inference_steps=STEPS, variant="dev")
    assert stack.stage_names == ["dtype", "first_block_cache"]
    image = run()
    fresh_pipe, fresh_run = tiny_image_runner("dev", STEPS)
    apply(fresh_pipe, second, num_inference_steps=STEPS, variant="dev")
    try:
        np.testing.assert_array_equal(image, fresh_run())
    finally:
        remove(fresh_pipe)


def test_applying_twice_without_remove_is_refused(dev):
    pipe, run, ref = dev
    apply(pipe, {"dtype": "float32", "channels_last": True})
    with pytest.raises(RecipeError, match=r"already carries the recipe .*channels_last.*Fix: fluxperf.remove\(pipe\)"):
        apply(pipe, {"dtype": "float32"})
    assert applied(pipe).stage_names == ["dtype", "channels_last"]  # the refusal changed nothing
    remove(pipe)
    apply(pipe, {"dtype": "float32"})
    np.testing.assert_array_equal(run(), ref)


def test_stages_that_cannot_be_undone_are_refused_or_kept_never_pretended(tiny_pipe_factory):
    pipe = tiny_pipe_factory()
    apply(pipe, {"dtype": "float32", "fuse_qkv": True, "channels_last": True})
    with pytest.raises(NotUndoableError, match=r"fuse_qkv \(the unfused to_q.*deleted.*Nothing was changed.*"
                                               r"partial=True.*dtype, channels_last"):
        remove(pipe)
    assert applied(pipe).stage_names == ["dtype", "fuse_qkv", "channels_last"]
    assert not pipe.vae.decoder.conv_in.weight.is_contiguous()  # refused: channels_last still on
    removal = remove(pipe, partial=True)
    assert removal.undone == ("channels_last", "dtype") and list(removal.kept) == ["fuse_qkv"]
    assert pipe.vae.decoder.conv_in.weight.is_contiguous()
    assert applied(pipe).stage_names == ["fuse_qkv"]  # still on the pipeline, and said so
    with pytest.raises(RecipeError, match=r"cannot be undone: fuse_qkv .*Fix: build a fresh pipeline"):
        apply(pipe, {"dtype": "float32"})


def test_a_narrowing_cast_is_not_undone_a_widening_one_is_exactly(tiny_pipe_factory):
    narrowed = tiny_pipe_factory(dtype="float32")
    apply(narrowed, {"dtype": "bfloat16"})
    with pytest.raises(NotUndoableError, match=r"dtype \(the cast to torch.bfloat16 rounded the weights of .*transformer"):
        remove(narrowed)
    widened = tiny_pipe_factory(dtype="bfloat16")
    before = {k: v.clone() for k, v in widened.transformer.state_dict().items()}
    apply(widened, {"dtype": "float32"})
    assert widened.transformer.dtype == torch.float32
    assert remove(widened).undone == ("dtype",)
    after = widened.transformer.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_attention_undo_puts_the_previous_processors_back(tiny_pipe_factory):
    from fluxperf.steps.attention.apply import flux_attention_modules

    pipe = tiny_pipe_factory(dtype="bfloat16")
    modules = flux_attention_modules(pipe.transformer)
    before = [m.processor for m in modules]
    stack = apply(pipe, {"dtype": "bfloat16", "attention": {"backend": "cudnn", "fallback": "sdpa"}})
    assert "attention" in stack.stage_names and all(m.processor is not p for m, p in zip(modules, before))
    assert remove(pipe).undone == ("attention", "dtype")
    assert all(m.processor is p for m, p in zip(modules, before))


def test_compile_undo_runs_the_modules_eagerly_again(tiny_pipe_factory):
    pipe = tiny_pipe_factory()
    stack = apply(pipe, {"dtype": "float32", "compile": {"enabled": True, "vae": True}})  # lazy: nothing compiles
    compiled = [m for m in [*pipe.transformer.modules(), *pipe.vae.decoder.modules()] if m._compiled_call_impl]
    assert stack.compile["compiled_modules"] > 0 and compiled
    assert remove(pipe).undone == ("compile", "dtype")
    assert all(m._compiled_call_impl is None for m in compiled)


def test_a_failed_apply_leaves_the_stages_before_it_removable(tiny_pipe_factory):
    pipe = tiny_pipe_factory(dtype="bfloat16")
    with pytest.raises(UnavailableError):  # float8 on a CPU: the quantize stage refuses
        apply(pipe, {"dtype": "bfloat16", "channels_last": True, "quantize": {"kind": "float8"}})
    assert applied(pipe).stage_names == ["dtype", "channels_last"]
    assert remove(pipe).undone == ("channels_last", "dtype")
    assert pipe.vae.decoder.conv_in.weight.is_contiguous()
    assert apply(pipe, {"dtype": "bfloat16"}).stage_names == ["dtype"]


def test_remove_after_the_cache_was_disabled_by_the_old_function(dev):
    from fluxperf.steps.caching.stats import disable_active_cache

    pipe, run, ref = dev
    apply(pipe, {"dtype": "float32", "first_block_cache": FBC}, num_inference_steps=STEPS, variant="dev")
    assert disable_active_cache(pipe) == "first_block"
    assert remove(pipe).undone == ("first_block_cache", "dtype")
    np.testing.assert_array_equal(run(), ref)


def test_export_undo_takes_the_adapters_off(tiny_pipe_factory, monkeypatch):
    """Export needs CUDA: eager graph runners stand in for the packages (as in test_export.py); what is checked is
    that remove() runs the export stage's undo and the modules run their own forward/decode again."""
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec
    from fluxperf.steps.export import apply as export
    from fluxperf.steps.export.call import (
        TransformerExportModule,
        VaeDecodeExportModule,
        transformer_example,
        vae_example,
    )
    from fluxperf.steps.export.cudagraph import CudaGraphRunner, EagerReplayBackend

    def fake_apply_export(pipe, recipe, spec, *, cache_dir=None):
        dims = dims_of_pipeline(pipe)
        export.install_adapters(
            pipe, spec, CudaGraphRunner(TransformerExportModule(pipe.transformer), backend=EagerReplayBackend()),
            transformer_example(spec, dims, dtype=torch.float32),
            CudaGraphRunner(VaeDecodeExportModule(pipe.vae), backend=EagerReplayBackend()),
            vae_example(spec, dims, dtype=torch.float32))
        return {"packages": {}}

    monkeypatch.setattr(export, "apply_export", fake_apply_export)
    pipe = tiny_pipe_factory("dev", text_encoders=False)
    stack = apply(pipe, {"dtype": "float32", "export": {"enabled": True}}, spec=ShapeSpec("dev", 64, 64, text_len=16))
    assert stack.stage_names == ["dtype", "export"] and "forward" in pipe.transformer.__dict__
    assert remove(pipe).undone == ("export", "dtype")
    assert "forward" not in pipe.transformer.__dict__ and "decode" not in pipe.vae.__dict__


def test_a_kept_stack_does_not_keep_the_pipelines_modules_alive(tiny_pipe_factory):
    """Callers keep the AppliedStack in their records after freeing the pipeline: the undo notes must not hold
    its modules (their weights are GPU memory on a real run)."""
    import gc
    import weakref

    pipe = tiny_pipe_factory(dtype="bfloat16")
    stack = apply(pipe, {"dtype": "bfloat16", "attention": {"backend": "cudnn", "fallback": "sdpa"},
                         "compile": {"enabled": True, "vae": False}})
    assert stack.step("attention") and stack.compile
    transformer = weakref.ref(pipe.transformer)
    del pipe
    gc.collect()
    assert transformer() is None
