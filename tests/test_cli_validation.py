"""Bad CLI values are refused at the edge (issue 13, item 12): exit 2, one line (option, value, rule, fix), before any
model is built and before any rung runs."""

import os
import subprocess
import sys
import time

import pytest

from fluxperf.cli import build_parser, main
from fluxperf.measure.ladder_run import LadderOptions, OptionError


@pytest.fixture
def no_model_build(no_model_build, monkeypatch):
    """The root conftest's no_model_build, on a machine without CUDA ("cuda without a GPU", on any machine)."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def _refused(argv, capsys) -> str:
    """Run the CLI; assert exit 2 and return the one error line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


LADDER_CASES = [
    (["--steps", "0"], ["--steps", "'0'", "integer in [1, 1000]", "Fix: "]),
    (["--steps", "four"], ["--steps", "'four'", "integer", "Fix: "]),
    (["--height", "0"], ["--height", "'0'", "a multiple of 16", "Fix: "]),
    (["--height", "100"], ["--height", "'100'", "a multiple of 16", "e.g. 96"]),
    (["--width", "-64"], ["--width", "'-64'", "a multiple of 16", "Fix: "]),
    (["--batch", "0"], ["--batch", "'0'", "integer in [1, 64]", "Fix: "]),
    (["--reference", "turbo"], ["--reference", "'turbo'", "one of ['baseline'", "Fix: "]),
    (["--rungs", "bf16,turbo"], ["--rungs", "'bf16,turbo'", "rungs from baseline", "Fix: drop ['turbo']"]),
    (["--rungs", ","], ["--rungs", "non-empty list", "Fix: "]),
    (["--device", "cuda"], ["--device", "'cuda'", "no CUDA GPU", "Fix: use cpu"]),
    (["--device", "cuda:1"], ["--device", "'cuda:1'", "no CUDA GPU", "Fix: "]),
    (["--device", "tpu"], ["--device", "'tpu'", "cpu, cuda or cuda:<index>", "Fix: "]),
    (["--rounds", "0"], ["--rounds", "'0'", "integer in [1, 10000]", "Fix: "]),
    (["--step-rounds", "-1"], ["--step-rounds", "'-1'", "integer in [1, 10000]", "Fix: "]),
    (["--warmup", "-1"], ["--warmup", "'-1'", "integer in [0, 1000]", "Fix: "]),
    (["--seed", "-3"], ["--seed", "'-3'", "integer in [0, 4294967295]", "Fix: "]),
    (["--variant", "pro"], ["--variant", "'pro'", "schnell"]),
    (["--size", "huge"], ["--size", "'huge'", "tiny"]),
    (["--checkpoint", " "], ["--checkpoint", "non-empty string", "Fix: "]),
]


@pytest.mark.parametrize("argv, words", LADDER_CASES, ids=[" ".join(c[0]) for c in LADDER_CASES])
def test_ladder_bad_value_exits_2_with_one_line_before_any_model_is_built(argv, words, no_model_build, capsys,
                                                                        tmp_path):
    t0 = time.perf_counter()
    line = _refused(["ladder", *argv, "--out", str(tmp_path / "out")], capsys)
    for word in words:
        assert word in line, line
    assert time.perf_counter() - t0 < 10  # nothing expensive ran


@pytest.mark.parametrize("argv, words", [
    (["--rungs", "bf16,cache_dit"], ["'cache_dit'", "variant='schnell'", "Fix: --variant dev"]),
    (["--variant", "dev", "--steps", "5", "--rungs", "cache_dit_f1b0"], ["8 warm-up steps", "steps=5", "--steps 9"]),
    (["--variant", "kontext", "--steps", "1", "--rungs", "fbcache"], ["'fbcache'", "steps=1", "--steps 2"]),
])
def test_ladder_cache_rungs_that_cannot_cache_are_refused_before_any_model(argv, words, no_model_build, capsys,
                                                                           tmp_path):
    assert main(["ladder", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_ladder_unwritable_out_is_refused_before_any_rung(no_model_build, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["ladder", "--rungs", "bf16", "--out", str(blocker / "ladder")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and str(blocker / "ladder") in err
    assert "cannot write there" in err and "Fix: choose a writable directory" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into a read-only directory")
def test_ladder_read_only_out_is_refused_before_any_rung(no_model_build, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["ladder", "--out", str(ro / "ladder")]) == 2
    finally:
        ro.chmod(0o755)
    assert "PermissionError" in capsys.readouterr().err


def test_every_ladder_and_profile_option_is_checked_at_parse_time():
    """A new option without a type (or choices) would be passed on unchecked: this pins that it cannot be."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("ladder", "profile"):
        for action in sub[command]._actions:
            if action.dest in ("help", "out", "func"):  # --out: proven writable in run(), before any work
                continue
            assert action.type is not None or action.choices is not None, f"{command} --{action.dest} unchecked"


def test_profile_bad_values_exit_2_before_profiling(no_model_build, capsys, tmp_path):
    table = tmp_path / "kernels.csv"
    table.write_text("name,count,cuda_time_us\nsm90_xmma_gemm,1,100.0\n")
    for argv, words in [
        (["--table", str(table), "--gemm-tflops", "-1"], ["--gemm-tflops", "'-1'", "number in (0, inf)"]),
        (["--table", str(table), "--attention-tflops", "0"], ["--attention-tflops", "'0'", "(0, inf)"]),
        (["--table", str(table), "--step-ms", "nan"], ["--step-ms", "'nan'", "finite number"]),
        (["--rung", "turbo"], ["--rung", "'turbo'", "one of ['baseline'"]),
        (["--rung", "bf16", "--rounds", "0"], ["--rounds", "'0'"]),
        (["--rung", "bf16", "--height", "100"], ["--height", "e.g. 96"]),
        (["--rung", "bf16", "--device", "tpu"], ["--device", "'tpu'"]),
    ]:
        line = _refused(["profile", *argv], capsys)
        assert all(w in line for w in words) and "Fix: " in line, line


def test_profile_missing_table_exits_2_with_one_line(no_model_build, capsys, tmp_path):
    assert main(["profile", "--table", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no kernel table" in err and "missing.csv" in err


def test_profile_unwritable_out_is_refused_before_profiling(no_model_build, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["profile", "--rung", "bf16", "--out", str(blocker / "p")]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_ladder_options_never_replace_a_given_value():
    with pytest.raises(OptionError, match=r"^steps=0 \(int\) is not allowed"):
        LadderOptions(steps=0)
    with pytest.raises(OptionError, match=r"^height=0 .*multiple of 16"):
        LadderOptions(height=0)
    with pytest.raises(OptionError, match="reference='turbo'"):
        LadderOptions(reference="turbo")
    opts = LadderOptions(device="cpu", height=128, steps=2, rungs=("bf16",)).resolved()
    assert (opts.height, opts.width, opts.steps, opts.size, opts.reference) == (128, 64, 2, "tiny", "bf16")


def test_console_exit_status_and_one_line_for_a_bad_value():
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fluxperf", "ladder", "--steps", "0"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("fluxperf ladder: error: argument --steps: '0'")
    assert "building" not in out.stderr and "[ladder]" not in out.stderr
    assert time.perf_counter() - t0 < 60
