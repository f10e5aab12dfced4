"""Stage regions and the profiler trace on the tiny pipeline (CPU): each region is in the trace, one
denoising_step per step, the breakdown adds up, and the pipeline is left as it was."""

from __future__ import annotations

import pytest
import torch

from fluxperf.measure.stage_regions import REGIONS, StageRegionError, stage_regions
from fluxperf.measure.trace import TraceFileError, check_trace_path, read_trace, region_counts, tagged, traced

STEPS = 3


@pytest.fixture(scope="module")
def tiny_call():
    """(pipe, call): a tiny schnell pipeline on CPU and a zero-argument call generating one PIL image."""
    from fluxperf.model.build import build_pipeline
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec, stand_in_prompt_embeds

    pipe = build_pipeline("schnell", "tiny", text_encoders=False, dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    embeds = stand_in_prompt_embeds(ShapeSpec("schnell", 64, 64, text_len=16), dims_of_pipeline(pipe), seed=0)

    def call(output_type="pil"):
        return pipe(height=64, width=64, num_inference_steps=STEPS, guidance_scale=0.0, output_type=output_type,
                    generator=torch.Generator().manual_seed(0), **embeds).images[0]

    call()  # warm-up
    return pipe, call


def test_trace_has_every_region_one_step_range_per_step(tiny_call, tmp_path):
    pipe, call = tiny_call
    path = check_trace_path(tmp_path / "t" / "trace.json.gz")
    with traced(pipe, path) as rec:
        image = call()
    assert image.size == (64, 64)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip, by the suffix
    assert region_counts(path) == {"prompt_encoding": 1, "denoising_step": STEPS, "decoding": 1,
                                   "postprocessing": 1, "pil_conversion": 1}
    events = {e["name"]: e for e in read_trace(path)["traceEvents"] if e.get("cat") == "user_annotation"}
    post, pil = events["postprocessing"], events["pil_conversion"]
    assert post["ts"] <= pil["ts"] and pil["ts"] + pil["dur"] <= post["ts"] + post["dur"]  # nested
    assert len(rec.breakdown()["denoising_step_median_ms"]) == STEPS
    plain = tmp_path / "trace.json"
    with traced(pipe, plain):
        call()
    assert plain.read_text().lstrip().startswith("{") and region_counts(plain)["denoising_step"] == STEPS


def test_breakdown_adds_up_to_the_whole_call(tiny_call):
    pipe, call = tiny_call
    with stage_regions(pipe) as rec:
        timed = rec.timed(call)
        for _ in range(3):
            timed()
    b = rec.breakdown(last=2)
    m = b["median_ms"]
    assert b["runs"] == 2 and b["clock"] == "perf_counter" and set(m) == {
        "prompt_encoding", "denoising", "decoding", "postprocessing", "pil_conversion", "other", "total"}
    assert all(v > 0 for k, v in m.items() if k != "other") and m["other"] >= 0
    assert m["pil_conversion"] < m["postprocessing"] < m["total"]
    assert len(b["denoising_step_median_ms"]) == STEPS
    assert m["denoising"] == pytest.approx(sum(b["denoising_step_median_ms"]), rel=0.5)  # median of sums
    for c in rec.calls[-2:]:  # per call, the stages sum exactly to the whole call
        d = rec._per_call(c)
        assert d["total"] == pytest.approx(d["prompt_encoding"] + d["denoising"] + d["decoding"]
                                           + d["postprocessing"] + d["other"])


def test_output_type_np_has_no_pil_conversion(tiny_call):
    pipe, call = tiny_call
    with stage_regions(pipe) as rec:
        call(output_type="np")
    assert "pil_conversion" not in rec.breakdown()["median_ms"] and "decoding" in rec.breakdown()["median_ms"]


def test_regions_are_removed_and_refuse_nesting(tiny_call):
    pipe, call = tiny_call
    before = (type(pipe.vae).decode, set(vars(pipe)), set(vars(pipe.scheduler)), set(vars(pipe.image_processor)))
    with stage_regions(pipe):
        assert "step" in vars(pipe.scheduler) and "decode" in vars(pipe.vae)
        with pytest.raises(StageRegionError, match="already installed"):
            with stage_regions(pipe):
                pass
    after = (type(pipe.vae).decode, set(vars(pipe)), set(vars(pipe.scheduler)), set(vars(pipe.image_processor)))
    assert before == after and "decode" not in vars(pipe.vae)


def test_an_instance_attribute_already_there_is_called_and_put_back(tiny_call):
    pipe, call = tiny_call
    seen = []
    original = pipe.vae.decode

    def adapter(*args, **kwargs):  # stands for fluxperf's export adapter on vae.decode
        seen.append(1)
        return original(*args, **kwargs)

    pipe.vae.decode = adapter
    try:
        with stage_regions(pipe) as rec:
            call()
        assert seen == [1] and "decoding" in rec.breakdown()["median_ms"]
        assert vars(pipe.vae)["decode"] is adapter
    finally:
        del pipe.vae.decode


def test_a_call_raising_inside_a_step_leaves_the_pipeline_clean(tiny_call, tmp_path):
    pipe, call = tiny_call
    path = tmp_path / "never.json"
    dim = pipe.transformer.config.joint_attention_dim
    with pytest.raises(RuntimeError):  # wrong embedding width: the transformer raises inside denoising_step 1
        with traced(pipe, path):
            pipe(height=64, width=64, num_inference_steps=2, prompt_embeds=torch.zeros(1, 4, dim + 1),
                 pooled_prompt_embeds=torch.zeros(1, pipe.transformer.config.pooled_projection_dim))
    assert not path.exists() and "step" not in vars(pipe.scheduler)
    ok = tmp_path / "after.json"
    with traced(pipe, ok):  # the profiler and the regions work again afterwards
        call()
    assert region_counts(ok)["denoising_step"] == STEPS


@pytest.mark.parametrize("name", ["trace.txt", "trace", ".json.gz", "trace.gz"])
def test_trace_path_must_be_json_or_json_gz(tmp_path, name):
    with pytest.raises(TraceFileError) as err:
        check_trace_path(tmp_path / name)
    assert ".json or .json.gz" in str(err.value) and "\n" not in str(err.value)


def test_trace_path_in_an_unwritable_place_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TraceFileError, match="cannot write"):
        check_trace_path(blocker / "trace.json.gz", option="--trace-file")


def test_tagged_puts_the_tag_before_the_suffix():
    assert tagged("out/trace.json.gz", "bf16").as_posix() == "out/trace.bf16.json.gz"
    assert tagged("trace.json", "compile").as_posix() == "trace.compile.json"


def test_regions_are_the_documented_names():
    assert REGIONS == ("prompt_encoding", "denoising_step", "decoding", "postprocessing", "pil_conversion")
