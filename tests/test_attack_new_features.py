"""Regression tests for bugs a hostile user found in the newest features (`fluxperf generate`, `fluxperf ladder`'s
--trace-file / --out / --rungs / latency table, the atomic image write).

Each test states what a user should get. A test marked `xfail(strict=True)` pins a bug that is still present: when
the code is fixed the test passes, strict xfail turns that into a failure, and the marker must be removed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from attack_helpers import EAGER, _name_max, _one_line_refusal, _plan, _yaml

from fluxperf.cli import build_parser, main
from fluxperf.measure.ladder_run import OptionError


# -- generate --output-file ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".xbm", ".msp", ".palm", ".h5", ".grib", ".wmf"])
def test_output_suffix_pil_cannot_write_an_rgb_image_to_is_refused_up_front(suffix, tmp_path):
    with pytest.raises(OptionError, match="--output-file"):
        _plan([*EAGER, "--output-file", str(tmp_path / f"image{suffix}")])


def test_over_long_output_file_name_is_a_one_line_refusal(tmp_path, capsys):
    name = "a" * (_name_max(tmp_path) + 1) + ".png"
    line = _one_line_refusal(["generate", *EAGER, "--output-file", str(tmp_path / name)], capsys)
    assert "--output-file" in line


def test_atomic_save_writes_a_legal_name_near_name_max(tmp_path):
    from fluxperf.io import atomic_save

    target = tmp_path / ("c" * (_name_max(tmp_path) - len(".png")) + ".png")
    atomic_save(target, lambda tmp: Path(tmp).write_bytes(b"image"))
    assert target.read_bytes() == b"image"


# -- --trace-file (generate and ladder share check_trace_path) -------------------------------------------------------
def test_trace_path_that_is_a_directory_is_refused(tmp_path):
    from fluxperf.measure.trace import TraceFileError, check_trace_path

    (tmp_path / "trace.json").mkdir()
    with pytest.raises(TraceFileError, match="--trace-file"):
        check_trace_path(tmp_path / "trace.json")


def test_over_long_trace_file_name_is_refused_before_any_work(tmp_path):
    from fluxperf.measure.trace import TraceFileError, check_trace_path

    with pytest.raises(TraceFileError, match="--trace-file"):
        check_trace_path(tmp_path / ("t" * (_name_max(tmp_path) + 1) + ".json"))


@pytest.fixture
def home_and_cwd(tmp_path, monkeypatch):
    """(HOME, working directory): two fresh directories, so '~' and relative paths are told apart."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home, cwd


def test_generate_trace_file_with_tilde_is_written_in_home(tmp_path, home_and_cwd):
    home, cwd = home_and_cwd
    assert main(["generate", *EAGER, "--steps", "1", "--output-file", str(tmp_path / "o.png"),
                 "--trace-file", "~/t.json"]) == 0
    assert not (cwd / "~").exists(), "wrote into a directory literally named '~'"
    assert (home / "t.json").is_file()


def test_ladder_out_and_trace_file_with_tilde_are_written_in_home(tmp_path, home_and_cwd):
    home, cwd = home_and_cwd
    assert main(["ladder", "--rungs", "baseline", "--steps", "1", "--runs", "1", "--step-rounds", "1",
                 "--warmup", "0", "--device", "cpu", "--out", "~/lad", "--trace-file", "~/t.json"]) == 0
    assert not (cwd / "~").exists(), "wrote into a directory literally named '~'"
    assert (home / "lad" / "ladder.json").is_file()
    assert (home / "t.baseline.json").is_file()


# -- --checkpoint ----------------------------------------------------------------------------------------------------
def _checkpoint_cases(tmp_path) -> dict[str, Path]:
    empty = tmp_path / "not-a-pipeline"
    empty.mkdir()
    return {"missing": tmp_path / "no-such-checkpoint", "no_model_index": empty}


@pytest.mark.parametrize("case", ["missing", "no_model_index"])
def test_generate_refuses_a_local_checkpoint_that_is_not_a_pipeline(case, tmp_path, capsys):
    path = _checkpoint_cases(tmp_path)[case]
    line = _one_line_refusal(["generate", *EAGER, "--checkpoint", str(path),
                              "--output-file", str(tmp_path / "o.png")], capsys)
    assert "--checkpoint" in line and str(path) in line


@pytest.mark.parametrize("case", ["missing", "no_model_index"])
def test_ladder_refuses_a_local_checkpoint_that_is_not_a_pipeline(case, tmp_path, capsys):
    path = _checkpoint_cases(tmp_path)[case]
    line = _one_line_refusal(["ladder", "--rungs", "baseline", "--runs", "1", "--device", "cpu", "--checkpoint", str(path),
                              "--out", str(tmp_path / "out")], capsys)
    assert "--checkpoint" in line


# -- --cache-dit-config ----------------------------------------------------------------------------------------------
def test_cache_dit_config_that_is_not_text_is_refused(tmp_path):
    path = _yaml(tmp_path, b"\xff\xfe\x00Fn_compute_blocks: 1\n")
    with pytest.raises(OptionError, match="--cache-dit-config"):
        _plan(["--variant", "dev", *EAGER, "--cache-dit-config", path])


def test_cache_dit_config_with_a_duplicate_key_is_refused(tmp_path):
    path = _yaml(tmp_path, b"Fn_compute_blocks: 1\nFn_compute_blocks: 2\nBn_compute_blocks: 0\n")
    with pytest.raises(OptionError, match="Fn_compute_blocks"):
        _plan(["--variant", "dev", *EAGER, "--cache-dit-config", path])


def test_cache_dit_config_yaml_tags_are_not_executed(tmp_path):
    """A hostile YAML tag is refused as bad YAML (safe_load), never constructed."""
    marker = tmp_path / "pwned"
    path = _yaml(tmp_path, f'!!python/object/apply:os.system ["touch {marker}"]\n'.encode())
    with pytest.raises(OptionError, match="not valid YAML"):
        _plan(["--variant", "dev", *EAGER, "--cache-dit-config", path])
    assert not marker.exists()


# -- ladder --rungs and the latency table ----------------------------------------------------------------------------
def test_ladder_refuses_a_rung_given_twice(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["ladder", "--rungs", "baseline,baseline"])
    assert exc.value.code == 2
    assert "baseline" in capsys.readouterr().err


def test_ladder_markdown_keeps_whole_run_counts_when_a_rung_failed():
    import pandas as pd

    from fluxperf.measure.ladder_report import COLUMNS, markdown

    ok = dict.fromkeys(COLUMNS)
    ok.update(rung="bf16", status="ok", image_runs=1, image_avg_ms=10.0, image_min_ms=10.0, step_median_ms=1.0,
              speedup_step=1.0, attention="sdpa", apply_s=0.0)
    failed = dict.fromkeys(COLUMNS)
    failed.update(rung="fa2", status="error", error="UnavailableError: flash runs on CUDA GPUs only")
    text = markdown(pd.DataFrame([ok, failed], columns=COLUMNS))
    header = next(line for line in text.splitlines() if line.startswith("| rung"))
    row = next(line for line in text.splitlines() if line.startswith("| bf16"))
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert cells["image_runs"] == "1"
