"""The classes behind the bugs of test_attack_new_features.py: each fix tested on more than the one input found
(every PIL suffix, atomic writers near NAME_MAX, path expansion, checkpoint forms, YAML forms, rung lists, ladder
reports)."""

from __future__ import annotations

from pathlib import Path

import pytest
from attack_helpers import EAGER, _name_max, _one_line_refusal, _plan, _yaml

from fluxperf.cli import build_parser
from fluxperf.measure.ladder_run import OptionError


# == the classes behind the bugs above: more than the one input each ===============================================
def test_every_registered_image_suffix_is_refused_up_front_or_written(tmp_path):
    """The class of bug 1: for EVERY suffix PIL registers, the check either refuses it or the run's own write (an
    RGB image through fluxperf.io.atomic_save, with the format the plan names) succeeds."""
    from PIL import Image

    from fluxperf.cli._generate_plan import check_output_file
    from fluxperf.cli.generate import _save

    image = Image.new("RGB", (16, 16), (200, 30, 30))
    refused = []
    for suffix in sorted(Image.registered_extensions()):
        target = tmp_path / f"image{suffix}"
        try:
            path, fmt = check_output_file(str(target))
        except OptionError as exc:
            assert "--output-file" in str(exc) and "Fix: end it in .png" in str(exc)
            refused.append(suffix)
            continue
        _save(image, path, fmt)
        assert path.stat().st_size > 0, suffix
    assert {".xbm", ".msp", ".palm", ".h5", ".grib", ".wmf", ".emf", ".blp", ".bufr"} <= set(refused)
    assert not {".png", ".jpg", ".webp", ".tiff", ".bmp"} & set(refused)
    from fluxperf.io import stale_temp_files

    assert stale_temp_files(tmp_path) == []


def test_atomic_writers_keep_the_format_suffix_and_leave_findable_temp_files(tmp_path):
    """Bug 3's class: every atomic writer, any legal name; the temp keeps the suffix a writer picks the format
    from; stale_temp_files finds a temp of the new naming while it exists (and the older naming's leftovers)."""
    from PIL import Image

    from fluxperf.io import atomic_save, atomic_write_json, atomic_write_text, name_max, stale_temp_files

    limit = name_max(tmp_path)
    text = atomic_write_text(tmp_path / ("t" * (limit - 4) + ".txt"), "x")
    assert text.read_text() == "x"
    record = atomic_write_json(tmp_path / ("j" * limit), {"a": 1})
    assert record.read_text().startswith("{")
    seen = []

    def save(tmp):
        seen.append(stale_temp_files(tmp_path))  # mid-write: the temp file is there
        Image.new("RGB", (16, 16)).save(tmp)  # PIL picks PNG from the temp's suffix

    png = atomic_save(tmp_path / ("p" * (limit - 4) + ".png"), save)
    assert Image.open(png).format == "PNG"
    assert len(seen[0]) == 1 and seen[0][0].name.endswith(".tmp.png") and len(seen[0][0].name) < 40
    odd = atomic_save(tmp_path / ("a." + "s" * (limit - 2)), lambda tmp: Path(tmp).write_bytes(b"1"))  # suffix ~NAME_MAX
    assert odd.read_bytes() == b"1"
    assert stale_temp_files(tmp_path) == []
    (tmp_path / ".ladder.csv.abc123.tmp.csv").write_text("killed")  # the older naming
    assert [p.name for p in stale_temp_files(tmp_path)] == [".ladder.csv.abc123.tmp.csv"]


def test_ladder_refuses_a_trace_name_that_fits_only_without_its_rung_tag(tmp_path, no_model_build, capsys):
    """--trace-file T.json writes T.<rung>.json per rung: the tagged names are checked, not only T.json."""
    name = "t" * (_name_max(tmp_path) - len(".json") - 2) + ".json"  # legal; + ".bf16" is not
    line = _one_line_refusal(["ladder", "--rungs", "bf16", "--out", str(tmp_path / "out"),
                              "--trace-file", str(tmp_path / name)], capsys)
    assert "--trace-file" in line and "'bf16'" in line and "Fix: choose a shorter name" in line


def test_over_long_out_and_trace_directory_are_one_line_refusals(tmp_path, no_model_build, capsys):
    long_dir = tmp_path / ("d" * (_name_max(tmp_path) + 1))
    line = _one_line_refusal(["ladder", "--rungs", "bf16", "--out", str(long_dir)], capsys)
    assert "--out" in line and "Fix:" in line
    line = _one_line_refusal(["generate", *EAGER, "--trace-file", str(long_dir / "t.json"),
                              "--output-file", str(tmp_path / "o.png")], capsys)
    assert "--trace-file" in line and "too long" in line
    (tmp_path / "shot.png").mkdir()
    line = _one_line_refusal(["generate", *EAGER, "--output-file", str(tmp_path / "shot.png")], capsys)
    assert "is a directory" in line


def test_generate_plan_holds_the_expanded_paths_it_checked(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    plan = _plan([*EAGER, "--output-file", "~/img/o.png", "--trace-file", "~/t.json.gz"])
    assert plan.output == home / "img" / "o.png" and plan.output_format == "PNG"
    assert plan.trace_file == home / "t.json.gz"
    assert not (tmp_path / "~").exists()


CHECKPOINT_REFUSALS = [
    ("a/b/c", "not a hub id"),  # three parts: neither a path that exists nor org/name
    ("./relative-missing", "no such file or directory"),
    ("~/missing-in-home", "no such file or directory"),
    ("bad name!", "not a hub id"),
]


@pytest.mark.parametrize("command", ["generate", "ladder"])
@pytest.mark.parametrize("text, words", CHECKPOINT_REFUSALS, ids=[t for t, _ in CHECKPOINT_REFUSALS])
def test_checkpoint_that_is_neither_a_pipeline_directory_nor_a_hub_id_is_refused(command, text, words, tmp_path,
                                                                                monkeypatch, no_model_build, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    line = _one_line_refusal([command, "--checkpoint", text], capsys)
    assert "--checkpoint" in line and repr(text) in line and words in line and "Fix:" in line


def test_checkpoint_checks_accept_a_pipeline_directory_and_a_hub_id_and_expand_home(tmp_path, monkeypatch):
    from fluxperf.model.build import checkpoint_problem, load_pipeline

    home = tmp_path / "home"
    (home / "flux").mkdir(parents=True)
    (home / "flux" / "model_index.json").write_text("{}")
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(home))
    args = build_parser().parse_args(["ladder", "--checkpoint", "~/flux"])
    assert args.checkpoint == str(home / "flux")  # the path checked is the path loaded
    assert build_parser().parse_args(["ladder", "--checkpoint", "black-forest-labs/FLUX.1-dev"]).checkpoint == \
        "black-forest-labs/FLUX.1-dev"
    assert "is a file" in checkpoint_problem(str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="model_index.json"):  # the library refuses before diffusers is asked
        load_pipeline(str(tmp_path))


def test_cache_dit_config_reads_scientific_notation_as_a_float(tmp_path):
    path = _yaml(tmp_path, b"Fn_compute_blocks: 1\nBn_compute_blocks: 0\nresidual_diff_threshold: 5e-2\n"
                           b"max_warmup_steps: 1\n")
    plan = _plan(["--variant", "dev", "--steps", "4", *EAGER, "--cache-dit-config", path])
    assert plan.recipe.cache_dit.residual_diff_threshold == pytest.approx(0.05)


def test_cache_dit_config_duplicate_key_under_cache_config_names_both_lines(tmp_path):
    path = _yaml(tmp_path, b"cache_config:\n  max_warmup_steps: 1\n  Bn_compute_blocks: 0\n  max_warmup_steps: 2\n")
    with pytest.raises(OptionError, match=r"duplicate key 'max_warmup_steps' \(first at line 2\)"):
        _plan(["--variant", "dev", *EAGER, "--cache-dit-config", path])


@pytest.mark.parametrize("rungs", [("bf16", "bf16"), ("baseline", "bf16", "baseline")])
def test_ladder_options_refuse_a_rung_given_twice(rungs):
    with pytest.raises(OptionError, match=r"given more than once.*Fix: --rungs " + ",".join(dict.fromkeys(rungs))):
        from fluxperf.measure.ladder_run import LadderOptions

        LadderOptions(rungs=rungs)


def test_ladder_csv_keeps_whole_run_counts_when_a_rung_failed():
    from fluxperf.measure.ladder_report import table
    from fluxperf.measure.ladder_run import LadderOptions, LadderResult, RungResult

    rungs = [RungResult(rung="bf16", image_latency={"n": 3}, step_ms={"median_ms": 1.0}, cached_steps=2),
             RungResult(rung="fa2", status="error", error="UnavailableError: x")]
    df = table(LadderResult(LadderOptions(rungs=("bf16", "fa2")), rungs, {}))
    assert str(df["image_runs"].dtype) == "Int64" and str(df["cached_steps"].dtype) == "Int64"
    assert df.to_csv(index=False).splitlines()[1].split(",")[2] == "3"  # "3", not "3.0"


# -- ladder: rungs this machine cannot run, and the reference ------------------------------------------------------
@pytest.mark.parametrize("argv", [["--rungs", "bf16,fa2"], ["--rungs", "compile_faithful"], ["--rungs", "float8_only"],
                                  ["--variant", "dev", "--steps", "4", "--rungs", "fa2_fbcache_int8"],
                                  ["--rungs", "baseline", "--reference", "fa2"]])
def test_ladder_refuses_rungs_this_machine_lacks_the_needs_of_before_building(argv, tmp_path, monkeypatch,
                                                                              no_model_build, capsys):
    from fluxperf.ladder import recipe_from
    from fluxperf.requirements import missing

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    line = _one_line_refusal(["ladder", *argv, "--out", str(tmp_path / "out")], capsys)
    refused = [n for n in ("fa2", "compile_faithful", "float8_only", "fa2_fbcache_int8") if f"'{n}'" in line]
    assert refused and "cannot run on cpu" in line and "Fix: drop them" in line
    for name in refused:
        assert missing(recipe_from(name), "cpu")[0] in line  # missing()'s own words
    assert not (tmp_path / "out").exists()  # refused before even the output directory


def test_ladder_up_front_check_lets_parallel_rungs_run_on_gloo_on_a_cpu():
    """A context-parallel rung on a CPU runs its ranks on gloo (the launcher makes the group): not refused."""
    from fluxperf.cli.ladder import _check_rungs_run_here
    from fluxperf.measure.ladder_run import LadderOptions

    _check_rungs_run_here(LadderOptions(rungs=("bf16", "cp2_ulysses_eager"), device="cpu").resolved())


@pytest.mark.parametrize("argv, says", [
    (["--rungs", "baseline,fused_qkv"], "baseline (the first rung: the default reference bf16 is not among the rungs"),
    (["--rungs", "baseline", "--reference", "fused_qkv"], "fused_qkv (not in --rungs: it runs first as an extra rung)"),
    (["--rungs", "baseline,bf16"], "bf16 (the default)"),
])
def test_ladder_says_which_rung_is_the_reference(argv, says, monkeypatch):
    from fluxperf.cli.ladder import _reference_line
    from fluxperf.measure.ladder_run import LadderOptions

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    args = build_parser().parse_args(["ladder", *argv])
    line = _reference_line(LadderOptions(rungs=args.rungs, reference=args.reference), args)
    assert f"reference rung (PSNR, SSIM, speed-up against it): {says}" in line


def test_ladder_markdown_names_the_reference_rung():
    import pandas as pd

    from fluxperf.measure.ladder_report import COLUMNS, markdown

    row = dict.fromkeys(COLUMNS)
    row.update(rung="baseline", status="ok", image_runs=2)
    text = markdown(pd.DataFrame([row], columns=COLUMNS), reference="baseline")
    assert text.rstrip().endswith("against the reference rung baseline.")


def test_ladder_progress_with_no_warmup_says_something_meaningful():
    from fluxperf.measure.ladder_run import LadderOptions, run_ladder

    lines = []
    run_ladder(LadderOptions(rungs=("baseline",), steps=1, rounds=1, step_rounds=1, warmup=0, device="cpu"),
               progress=lines.append)
    done = next(line for line in lines if line.startswith("[ladder] baseline: image avg"))
    assert "nan" not in done, done
