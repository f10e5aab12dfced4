"""`fluxperf generate` (issue 15.3): the real command on the tiny model, the --no-X switch table, the CPU switch-off
(said, never silent), refusals before any model is built (exit 2, one line), the cache-dit YAML, and the
--use-cached-model hit/miss messages read from real package-cache manifests."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fluxperf.cli import build_parser, main
from fluxperf.cli._generate_packages import outcome_lines
from fluxperf.cli._generate_plan import make_plan
from fluxperf.cli._generate_switches import SWITCHES, switched_recipe_dict
from fluxperf.ladder import rung

NOISE = ("W1", "Failed to load", "Unable to import", "torchvision")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _plan(argv):
    return make_plan(build_parser().parse_args(["generate", *argv]))


def _refused(argv, capsys) -> str:
    """Run `fluxperf generate argv`; assert exit status 2 and ONE error line; return it."""
    try:
        status = main(["generate", *argv])
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "cache.yaml"
    path.write_text(text)
    return str(path)


# -- the real command on the tiny model -----------------------------------------------------------------------------
def test_generate_writes_the_image_and_reports_stack_and_timing(tmp_path, capsys):
    from fluxperf.measure.trace import region_counts

    out, trace = tmp_path / "img" / "car.png", tmp_path / "trace" / "t.json.gz"
    assert main(["generate", "--prompt", "a red car", "--steps", "2", "--width", "96", "--output-file", str(out),
                 "--no-compile", "--no-flags", "--trace-file", str(trace)]) == 0
    captured = capsys.readouterr()
    # --trace-file: one more call, profiled, every stage region present, one denoising_step per step
    assert region_counts(trace) == {"prompt_encoding": 1, "denoising_step": 2, "decoding": 1, "postprocessing": 1,
                                    "pil_conversion": 1}
    assert "stages of the traced call (ms): " in captured.err
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (96, 64) and image.mode == "RGB"
        assert any(lo < hi for lo, hi in image.getextrema())  # a decoded image, not a blank
    assert sorted(p.name for p in out.parent.iterdir()) == ["car.png"]  # atomic: no temp file left behind
    # on a CPU the GPU-only steps are switched off, and it is SAID (with the switches that do it by hand)
    note = next(line for line in captured.err.splitlines() if line.startswith("note: on cpu"))
    assert all(flag in note for flag in ("--no-fp8-attention", "--no-quant", "--no-export"))
    assert "denoising" in captured.err  # diffusers' progress bar, on stderr
    assert "applied (generate): dtype, fuse_qkv, channels_last;" in captured.out
    assert "fuse_qkv: fused_attention_modules=3" in captured.out and "channels_last: vae=channels_last" in captured.out
    timing = next(line for line in captured.out.splitlines() if line.startswith("timing:"))
    assert all(w in timing for w in ("build", "apply", "first call")) and "compile" not in timing
    assert f"wrote {out}" in captured.out


@pytest.mark.cache_dit
def test_generate_with_a_cache_dit_config_runs_dbcache(tmp_path, capsys):
    pytest.importorskip("cache_dit")
    config = _yaml(tmp_path, "cache_config:\n  Fn_compute_blocks: 1\n  Bn_compute_blocks: 0\n  max_warmup_steps: 1\n"
                             "  residual_diff_threshold: 0.5\n  cache_type: DBCache\n")
    out = tmp_path / "dev.png"
    assert main(["generate", "--variant", "dev", "--steps", "3", "--cache-dit-config", config, "--output-file",
                 str(out), "--no-compile", "--no-flags"]) == 0
    stdout = capsys.readouterr().out
    line = next(line for line in stdout.splitlines() if line.strip().startswith("cache_dit:"))
    assert "enabled=True" in line and "Fn=1" in line and "Bn=0" in line and "DBCache_F1B0" in line
    stats = next(line for line in stdout.splitlines() if line.startswith("cache_dit: "))
    assert "of 3 steps served from the cache" in stats  # a threshold of 0.5 on random weights: counted, not assumed
    assert out.is_file()


# -- switches: one table, each --no-X exactly its fields -------------------------------------------------------------
EXPECTED = {  # flag -> the fields it changes relative to the top rung
    "--no-bf16": {"dtype": "float32"},
    "--no-fuse-qkv": {"fuse_qkv": False},
    "--no-channels-last": {"channels_last": False},
    "--no-fp8-attention": {"attention.backend": "sdpa"},
    "--no-quant": {"quantize.kind": "none"},
    "--no-flags": {"inductor_flags.enabled": False},
    "--no-export": {"export.enabled": False, "compile.enabled": True},  # torch.compile replaces export
    "--no-compile": {"export.enabled": False},  # the top rung compiles nothing with torch.compile: no Inductor left
}


def test_the_default_is_the_top_rung_and_each_switch_changes_exactly_its_fields():
    from fluxperf.ladder import LADDER

    assert LADDER[-1] == "export"  # the top rung; _generate_switches.TOP_RUNG names it
    top = _flat(rung("export").to_dict())
    assert _flat(switched_recipe_dict([])) == top
    assert set(EXPECTED) == {s.flag for s in SWITCHES}
    for flag, fields in EXPECTED.items():
        flat = _flat(switched_recipe_dict([flag]))
        assert {k: v for k, v in flat.items() if top[k] != v} == fields, flag
    both = _flat(switched_recipe_dict(["--no-compile", "--no-export"]))  # order-free: eager either way
    assert both["compile.enabled"] is False and both["export.enabled"] is False


def test_each_switch_reaches_the_recipe_of_the_run(no_model_build):
    """Through argparse and make_plan (on this CPU: the GPU-only steps are off anyway)."""
    base = ["--no-compile", "--no-flags", "--device", "cpu"]
    default = _flat(_plan(base).recipe.to_dict())
    assert default["fuse_qkv"] and default["channels_last"] and default["dtype"] == "bfloat16"
    for flag, field in [("--no-fuse-qkv", "fuse_qkv"), ("--no-channels-last", "channels_last"),
                        ("--no-bf16", "dtype")]:
        changed = _flat(_plan([*base, flag]).recipe.to_dict())
        assert {k for k in default if default[k] != changed[k]} == {field}, flag
    plan = _plan(["--device", "cpu"])
    assert plan.recipe.compile.enabled and plan.recipe.inductor_flags.enabled and not plan.recipe.export.enabled
    assert (plan.size, plan.height, plan.width, plan.steps) == ("tiny", 64, 64, 4)
    assert [s for s in ("--no-fp8-attention", "--no-quant", "--no-export") if s in plan.notes[0]] == \
        ["--no-fp8-attention", "--no-quant", "--no-export"]
    silenced = _plan(["--device", "cpu", "--no-fp8-attention", "--no-quant", "--no-export"])
    assert silenced.notes == () and silenced.recipe == plan.recipe  # by hand: the same recipe, no note


# -- refusals: exit 2, one line, before any model ----------------------------------------------------------------------
REFUSALS = [
    (["--height", "100"], ["--height", "'100'", "multiple of 16", "e.g. 96"]),
    (["--width", "0"], ["--width", "'0'", "multiple of 16", "Fix: "]),
    (["--height", "8192"], ["--height", "'8192'", "[16, 4096]", "Fix: "]),
    (["--steps", "0"], ["--steps", "'0'", "integer in [1, 1000]"]),
    (["--seed", "-1"], ["--seed", "'-1'", "Fix: "]),
    (["--variant", "kontext"], ["--variant", "'kontext'"]),
    (["--prompt", "  "], ["--prompt", "non-empty string"]),
    (["--device", "cuda"], ["--device", "no CUDA GPU", "Fix: use cpu"]),
    (["--size", "tiny", "--checkpoint", "some/model"], ["--size tiny with --checkpoint", "Fix: drop --size"]),
    (["--output-file", "out.txt"], ["--output-file", "'.txt'", "Fix: end it in .png"]),
    (["--trace-file", "t.txt", "--no-export"], ["--trace-file", "t.txt", ".json"]),
    (["--use-cached-model"], ["--use-cached-model with export off", "CUDA GPU", "Fix: drop --use-cached-model"]),
    (["--cache-dir", "/tmp/x"], ["--cache-dir", "without --use-cached-model", "Fix: add --use-cached-model"]),
    (["--no-compile"], ["inductor_flags.enabled=True", "inductor_flags.enabled <- --no-flags",
                        "compile.enabled <- --no-compile"]),
]


@pytest.mark.parametrize("argv, words", REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_bad_arguments_exit_2_with_one_line_before_any_model(argv, words, no_model_build, monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    line = _refused(argv, capsys)
    assert all(w in line for w in words), line


def test_output_file_that_is_a_directory_is_refused(no_model_build, tmp_path, capsys):
    line = _refused(["--output-file", str(tmp_path), "--device", "cpu"], capsys)
    assert "is a directory" in line


YAML_REFUSALS = [
    ("enable_taylorseer: true\nFn_compute_blocks: 1\n", ["unsupported key(s) ['enable_taylorseer']",
                                                         "Fn_compute_blocks"]),
    ("Fn_compute_blocks: -1\n", ["Fn_compute_blocks=-1", "integer in [0, 57]", "Fix: "]),
    ("Fn_compute_blocks: yes\n", ["Fn_compute_blocks=True", "integer"]),
    ("residual_diff_threshold: 0\nFn_compute_blocks: 1\nBn_compute_blocks: 0\n",
     ["residual_diff_threshold=0", "(0, 10)"]),
    ("Fn_compute_blocks: [1\n", ["not valid YAML at line", "Fix: "]),
    ("- Fn_compute_blocks\n", ["holds a list, not a mapping"]),
    ("", ["the file is empty"]),
    ("cache_type: DBPrune\n", ["cache_type='DBPrune'", "DBCache only"]),
    ("num_inference_steps: 28\nFn_compute_blocks: 1\nBn_compute_blocks: 0\nmax_warmup_steps: 1\n",
     ["num_inference_steps=28 but --steps gives 10"]),
    ("cache_config:\n  Fn_compute_blocks: 1\nparallelism_config: {}\n", ["['parallelism_config'] next to cache_config"]),
    ("Fn_compute_blocks: 2\nBn_compute_blocks: 1\nmax_warmup_steps: 1\n", ["Fn_compute_blocks=2 + Bn_compute_blocks=1",
                                                                         "tiny model's 3 blocks"]),
    ("Fn_compute_blocks: 1\nBn_compute_blocks: 0\nmax_warmup_steps: 12\n",
     ["max_warmup_steps=12 with --steps 10", "--steps 13 or more"]),
]


@pytest.mark.parametrize("text, words", YAML_REFUSALS, ids=[t.splitlines()[0] if t else "empty" for t, _ in YAML_REFUSALS])
def test_bad_cache_dit_yaml_is_refused_naming_the_key(text, words, no_model_build, tmp_path, capsys):
    config = _yaml(tmp_path, text)
    line = _refused(["--variant", "dev", "--steps", "10", "--device", "cpu", "--cache-dit-config", config], capsys)
    assert config in line and all(w in line for w in words), line


def test_cache_dit_config_is_refused_for_schnell_and_with_export(no_model_build, tmp_path, monkeypatch, capsys):
    config = _yaml(tmp_path, "Fn_compute_blocks: 1\nBn_compute_blocks: 0\nmax_warmup_steps: 1\n")
    line = _refused(["--cache-dit-config", config, "--device", "cpu"], capsys)
    assert "with --variant schnell" in line and "Fix: --variant dev" in line
    line = _refused(["--cache-dit-config", str(tmp_path / "missing.yaml"), "--variant", "dev", "--device", "cpu"],
                    capsys)
    assert "cannot read it" in line and "missing.yaml" in line
    # on a GPU export stays on (nothing is switched off there): cache-dit with export is refused as flux-fast does
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    line = _refused(["--cache-dit-config", config, "--variant", "dev"], capsys)
    assert "with export on" in line and "Fix: add --no-export" in line


def test_a_recipe_rule_broken_by_switches_is_worded_in_switches(no_model_build, monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # on a GPU float8 stays on: fp32 cannot carry it
    line = _refused(["--no-bf16"], capsys)
    assert "quantize.kind='float8' with dtype='float32'" in line
    assert "quantize.kind <- --no-quant" in line and "dtype <- --no-bf16" in line


# -- --use-cached-model: what the cache holds, hit or miss and why -----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dev():
    from fluxperf.model.build import build_pipeline

    return build_pipeline("dev", "tiny", text_encoders=False)


def _store(cache: Path, pipe, recipe, *, spec=None, **key_changes) -> tuple[Path, dict]:
    """Store a package for `pipe`'s transformer under its real cache key (apply_export's key and manifest fields;
    the package file's bytes are never read by the messages under test)."""
    from fluxperf.model.shapes import ShapeSpec
    from fluxperf.steps.export import cache as ec
    from fluxperf.steps.export.apply import inductor_configs_for, package_key
    from fluxperf.steps.export.call import TransformerExportModule
    from fluxperf.steps.export.code import code_fingerprint

    code = key_changes.pop("code", None) or code_fingerprint(pipe.transformer)
    key = package_key("transformer", TransformerExportModule(pipe.transformer), spec or ShapeSpec("dev", 64, 64),
                      recipe)
    key = dataclasses.replace(key, **key_changes)
    path, status, _ = ec.get_or_build(cache, key, lambda tmp: Path(tmp).write_bytes(b"pt2"),
                                      recipe=recipe.to_dict(), inductor_configs=inductor_configs_for(recipe),
                                      code=code)
    return path, key.as_dict()


def _miss_report(cache: Path, path: Path, key: dict) -> dict:
    """What apply_export returns after building `path` (the fields outcome_lines reads)."""
    return {"cache": {"transformer": "miss"}, "packages": {"transformer": str(path)}, "keys": {"transformer": key},
            "build_s": {"transformer": 61.0}, "load_s": {"transformer": 0.5}, "cache_dir": str(cache)}


def test_survey_says_what_the_cache_holds_for_this_gpu_torch_and_shape(tiny_dev, tmp_path):
    from fluxperf.cli.generate import _survey

    recipe = rung("export").replace(dtype="bfloat16")
    plan = _plan(["--variant", "dev", "--device", "cpu"])
    assert _survey(plan, str(tmp_path)) == [f"transformer: no cached package in {tmp_path}; it will be built (minutes "
                                            "on a GPU)", f"vae_decoder: no cached package in {tmp_path}; it will be "
                                            "built (minutes on a GPU)"]
    _store(tmp_path, tiny_dev, recipe, torch_version="2.11.0+cu130")
    lines = _survey(plan, str(tmp_path))
    assert "no cached package for this GPU, torch, shape and dtype (1 for others" in lines[0]
    import torch

    assert f"torch '2.11.0+cu130' (here '{torch.__version__}')" in lines[0] and "it will be built" in lines[0]
    _store(tmp_path, tiny_dev, recipe)  # this machine's torch and GPU ('cpu'), this shape: the key plan computes
    assert "1 cached package(s) for this GPU, torch, shape and dtype" in _survey(plan, str(tmp_path))[0]


def test_outcome_names_the_key_parts_a_miss_differs_in(tiny_dev, tmp_path):
    recipe = rung("export")
    old, _ = _store(tmp_path, tiny_dev, recipe.replace(fuse_qkv=False))
    new, key = _store(tmp_path, tiny_dev, recipe)
    [line] = outcome_lines(_miss_report(tmp_path, new, key))
    assert line.startswith(f"transformer: cache miss: built in 61.0 s -> {new}")
    assert f"closest cached package {old.parent} differs in: recipe: fuse_qkv" in line

    other = tmp_path / "other"
    from fluxperf.steps.export.code import code_fingerprint

    code = code_fingerprint(tiny_dev.transformer)
    bumped = {**code, "versions": {**code["versions"], "diffusers": "0.41.0"}}
    _store(other, tiny_dev, recipe, code=bumped, code_hash="0" * 16, gpu_name="NVIDIA H100 80GB HBM3")
    new, key = _store(other, tiny_dev, recipe)
    [line] = outcome_lines(_miss_report(other, new, key))
    assert "GPU 'NVIDIA H100 80GB HBM3' (here 'cpu')" in line
    assert f"code: diffusers 0.41.0 -> {code['versions']['diffusers']}" in line

    alone = tmp_path / "alone"
    new, key = _store(alone, tiny_dev, recipe)
    assert outcome_lines(_miss_report(alone, new, key))[0].endswith(f"(no other transformer package is stored in "
                                                                    f"{alone})")
    hit = {**_miss_report(alone, new, key), "cache": {"transformer": "hit"}}
    assert outcome_lines(hit) == [f"transformer: cache hit: reused {new} (loaded in 0.50 s)"]


# -- GPU: the real command twice, miss then hit ---------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.export
def test_use_cached_model_builds_then_reuses_on_the_gpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("AOTInductor export needs a CUDA GPU; run `pytest -m gpu` on the H100/H200")
    cmd = [sys.executable, "-m", "fluxperf.cli", "generate", "--size", "tiny", "--steps", "2", "--use-cached-model",
           "--cache-dir", str(tmp_path / "aoti"), "--no-fp8-attention", "--no-quant"]
    env = {**os.environ}
    runs = []
    for name in ("first.png", "second.png"):
        done = subprocess.run([*cmd, "--output-file", str(tmp_path / name)], capture_output=True, text=True, env=env,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
        runs.append(done)
    assert "transformer: no cached package in" in runs[0].stderr
    assert "package cache: transformer: cache miss: built in" in runs[0].stdout
    assert "1 cached package(s) for this GPU, torch, shape and dtype" in runs[1].stderr
    assert "package cache: transformer: cache hit: reused" in runs[1].stdout
    assert "vae_decoder: cache hit" in runs[1].stdout
    import numpy as np
    from PIL import Image

    first, second = (np.asarray(Image.open(tmp_path / n)) for n in ("first.png", "second.png"))
    # same seed, same package kernels: the same image (a rounding step of 2/255 allowed for nondeterministic GEMMs)
    assert np.abs(first.astype(int) - second.astype(int)).max() <= 2
