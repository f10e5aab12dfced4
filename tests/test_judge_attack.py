"""The one judge attacked with bad input, as a demanding user would (CPU only, fake runs).

Each test is one defect class found by the attack; every class is fixed (the ones first left as strict xfails
were fixed by the judge's owner: remove on a corrupt file, empty/too-short baselines, numerics derivation, the
history verbs, --benchmark-compare-fail with nothing measured, a comparison that raised). Promise under test (issue 12, perf/README.md "The one
judge"): every outcome sets the exit status, nothing judged is never exit 0, a bad file stops with 12 naming file,
key, value and fix, and bad input gets one clear line, never a raw traceback (in-process: `main` returns a status
or exits through argparse; any other exception is the traceback a user would have seen).
"""

from __future__ import annotations

import json
import math

import matplotlib  # noqa: F401  (imported once here: pytester's in-process runs cannot re-import numpy)
import pandas  # noqa: F401
import pytest
import scipy.stats  # noqa: F401
import torch  # noqa: F401  (same reason: a C extension must not be imported twice in one process)
from root_conftest import run_in_process

from fluxperf.bench import EXIT_BASELINE_ERROR, EXIT_NOT_MEASURED
from fluxperf.bench import baseline_update as bu
from fluxperf.bench.baseline import BASELINE_NAME, load_baseline
from fluxperf.bench.fakes import H100, fake_run, noisy
from fluxperf.cli import main
from fluxperf.errors import BaselineError

pytest_plugins = ["pytester"]
A = "perf/test_x.py::test_a"
B = "perf/test_x.py::test_b"
SLUG = "nvidia-h100-80gb-hbm3"


def cli(*argv) -> int:
    """`fluxperf ARGV` in-process: its status (argparse's SystemExit included); other exceptions propagate."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def write(path, doc):
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.fixture
def root(tmp_path):
    """A baselines root holding A and B for the H100 (20 rounds each)."""
    run = write(tmp_path / "base.json", fake_run({A: noisy(0.1, 20, seed=1), B: noisy(0.2, 20, seed=2)}))
    bu.update_baseline([run], root=tmp_path / "baselines", command="test")
    return tmp_path / "baselines"


def same_code_run(tmp_path, name="run.json", extra=None):
    return write(tmp_path / name, fake_run({A: noisy(0.1, 20, seed=3), B: noisy(0.2, 20, seed=4)}, extra_info=extra))


def mutate_baseline(root, fn):
    path = root / SLUG / BASELINE_NAME
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


# == fixed: numbers that pass `isfinite` but overflow downstream =============================================
@pytest.mark.parametrize("value", [1e308, 10**400], ids=["1e308-s-overflows-to-inf-ms", "400-digit-int"])
def test_a_finite_but_absurd_sample_is_a_baseline_error_not_a_traceback(root, tmp_path, value, capsys):
    path = mutate_baseline(root, lambda d: d["benchmarks"][0]["stats"]["data"].__setitem__(0, value))
    with pytest.raises(BaselineError, match=r"stats\.data\[0\]"):
        load_baseline(path)
    assert cli("baseline", "check", same_code_run(tmp_path), "--root", root) == EXIT_BASELINE_ERROR
    assert f"{path}: benchmarks[{A}].stats.data[0]" in capsys.readouterr().err


# == fixed: extra_info fields the judge does arithmetic on, of the wrong type ================================
TYPED_EXTRA = {
    "proxy as string": {"proxies": {"kernels_per_step": "1541"}},
    "proxy as object": {"proxies": {"kernels_per_step": {"n": 1541}}},
    "peak memory as string": {"proxies": {"peak_mem_gib": "30"}},
    "cached steps as string": {"proxies": {"cached_steps": "8"}},
    "compile seconds as list": {"metrics": {"compile_cold_s": [25.0]}},
    "throttle reasons as int": {"monitor": {"verdict": {"throttled": True, "reasons": 5}}},
    "sm clock median as string": {"monitor": {"sm_clock_mhz": {"median": "900"}}},
    "sm clock as list": {"monitor": {"sm_clock_mhz": [900]}},
}


@pytest.mark.parametrize("case", sorted(TYPED_EXTRA))
def test_a_run_with_a_mistyped_judged_field_is_refused_by_key(root, tmp_path, case, capsys):
    """Before: the validator skipped string/list/object values, and compare.py died with a TypeError (exit 1)."""
    run = same_code_run(tmp_path, extra=TYPED_EXTRA[case])
    assert cli("baseline", "check", run, "--root", root) == EXIT_BASELINE_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: run.json: benchmarks[") and "extra_info." in err and "Fix:" in err


@pytest.mark.parametrize("case", sorted(TYPED_EXTRA))
def test_update_never_stores_a_mistyped_judged_field(tmp_path, case):
    """Before: `baseline update` stored e.g. a string proxy; every later check then crashed on it."""
    run = same_code_run(tmp_path, extra=TYPED_EXTRA[case])
    assert cli("baseline", "update", run, "--root", tmp_path / "b") == EXIT_BASELINE_ERROR
    assert not (tmp_path / "b" / SLUG / BASELINE_NAME).exists()


@pytest.mark.parametrize("table", ["x", [1, 2], [{"name": "gemm"}]], ids=["string", "ints", "no-columns"])
def test_update_refuses_a_kernel_table_that_is_not_kernel_records(tmp_path, table, capsys):
    run = same_code_run(tmp_path, extra={"kernel_table": table})
    assert cli("baseline", "update", run, "--root", tmp_path / "b") == EXIT_BASELINE_ERROR
    assert "extra_info.kernel_table" in capsys.readouterr().err
    assert not (tmp_path / "b" / SLUG / BASELINE_NAME).exists()


# == fixed: wrong types that are falsy ([] / 0) slipped through `or {}`; untyped sections crashed `show` ======
FALSY_OR_UNTYPED = {
    "thresholds []": ("fluxperf.thresholds", lambda d: d["fluxperf"].update(thresholds=[])),
    "thresholds 0": ("fluxperf.thresholds", lambda d: d["fluxperf"].update(thresholds=0)),
    "kernel_tables []": ("fluxperf.kernel_tables", lambda d: d["fluxperf"].update(kernel_tables=[])),
    "provenance list": ("fluxperf.provenance", lambda d: d["fluxperf"].update(provenance=[])),
    "removed string": ("fluxperf.removed", lambda d: d["fluxperf"].update(removed="x")),
    "versions string": ("machine_info.fluxperf.versions",
                        lambda d: d["machine_info"]["fluxperf"].update(versions="torch 2.11")),
}


@pytest.mark.parametrize("case", sorted(FALSY_OR_UNTYPED))
def test_every_section_of_a_baseline_is_typed(root, tmp_path, case, capsys):
    key, fn = FALSY_OR_UNTYPED[case]
    path = mutate_baseline(root, fn)
    with pytest.raises(BaselineError, match=key.replace(".", r"\.")):
        load_baseline(path)
    assert cli("baseline", "check", same_code_run(tmp_path), "--root", root) == EXIT_BASELINE_ERROR
    assert cli("baseline", "show", "--gpu", SLUG, "--root", root) == EXIT_BASELINE_ERROR


# == fixed: a malformed run selection hid a benchmark that did not run (silent PASS) ===========================
@pytest.mark.parametrize("selected", ["perf/test_x.py::test_a", [1, 2], {"a": 1}], ids=["string", "ints", "object"])
def test_a_malformed_selection_cannot_hide_a_baselined_benchmark_that_did_not_run(root, tmp_path, selected, capsys):
    """Before: selected="..." was iterated as characters, B (baselined, not run) was not expected: exit 0."""
    run = fake_run({A: noisy(0.1, 20, seed=3)})
    run["fluxperf"]["selected"] = selected
    assert cli("baseline", "check", write(tmp_path / "r.json", run), "--root", root) == EXIT_BASELINE_ERROR
    assert "fluxperf.selected" in capsys.readouterr().err


def test_a_run_whose_fluxperf_section_is_not_an_object_is_refused(root, tmp_path):
    run = fake_run({A: noisy(0.1, 20, seed=3)})
    run["fluxperf"] = [A]
    assert cli("baseline", "check", write(tmp_path / "r.json", run), "--root", root) == EXIT_BASELINE_ERROR


# == fixed: `baseline show` and `baseline remove` details ====================================================
def test_show_survives_a_baseline_without_provenance_and_shows_the_threshold_the_judge_uses(root, capsys):
    """Before: KeyError traceback without provenance; a benchmark without a stored threshold showed 'threshold
    0.0%' while the judge used the 3 % floor."""
    def strip(d):
        del d["fluxperf"]["provenance"]
        del d["fluxperf"]["thresholds"][A]
    mutate_baseline(root, strip)
    assert cli("baseline", "show", "--gpu", SLUG, "--root", root) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if A in x)
    assert "threshold 3.0%" in line and "0.0%" not in line


def test_remove_counts_and_logs_a_repeated_name_once(root, capsys):
    assert cli("baseline", "remove", "--gpu", SLUG, "--root", root, A, A) == 0
    assert "removed 1 benchmark(s)" in capsys.readouterr().out
    removed = json.loads((root / SLUG / BASELINE_NAME).read_text())["fluxperf"]["removed"]
    assert removed[-1]["benchmarks"] == [A]


# == fixed after the attack: `baseline remove` reads the file unvalidated =====================================================
@pytest.mark.parametrize("text", ["{", "[]"], ids=["truncated", "list"])
def test_remove_on_a_corrupt_baseline_is_a_baseline_error(root, text, capsys):
    write(root / SLUG / BASELINE_NAME, text)
    assert cli("baseline", "remove", "--gpu", SLUG, "--root", root, A) == EXIT_BASELINE_ERROR
    assert str(root / SLUG / BASELINE_NAME) in capsys.readouterr().err


# == fixed after the attack: `baseline update` with nothing to record =========================================================
def test_update_with_a_run_that_measured_nothing_is_refused_and_writes_nothing(tmp_path):
    empty = write(tmp_path / "empty.json", fake_run({}))
    assert cli("baseline", "update", empty, "--root", tmp_path / "b") != 0
    assert not (tmp_path / "b" / SLUG / BASELINE_NAME).exists()


def test_update_refuses_a_record_too_short_to_ever_show_a_regression(tmp_path):
    one = write(tmp_path / "one.json", fake_run({A: [0.1]}))
    assert cli("baseline", "update", one, "--root", tmp_path / "b") == EXIT_BASELINE_ERROR


# == fixed after the attack: `fluxperf baseline numerics` (fluxperf/cli/_numerics.py, fluxperf/measure/thresholds.py) ==================
GOOD_MEASURED = {"compile": {"psnr_db": 40.0, "forward_rel_err": 0.01, "vae_rel_err": 0.01}}


@pytest.mark.parametrize("text", ["[1, 2]", b"\xff\xfe"], ids=["list", "not-utf8"])
def test_numerics_with_an_odd_measured_file_is_one_line_not_a_traceback(tmp_path, text):
    m = tmp_path / "m.json"
    m.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc = cli("baseline", "numerics", m, "--gpu", "NVIDIA H200", "--root", tmp_path / "b")
    assert rc in (2, EXIT_BASELINE_ERROR)


@pytest.mark.parametrize("measured", [{"psnr_db": 2.0, "forward_rel_err": 0.01, "vae_rel_err": 0.01},
                                      {"psnr_db": 40.0, "forward_rel_err": 5.0, "vae_rel_err": 0.01}],
                         ids=["psnr-below-margin", "rel-err-over-1"])
def test_numerics_never_writes_a_file_its_own_loader_refuses(tmp_path, measured):
    from fluxperf.measure.thresholds import load, path_for

    good = write(tmp_path / "good.json", GOOD_MEASURED)
    assert cli("baseline", "numerics", good, "--gpu", "NVIDIA H200", "--root", tmp_path / "b") == 0
    before = path_for(tmp_path / "b", "nvidia-h200").read_text()
    bad = write(tmp_path / "bad.json", {"compile": measured})
    assert cli("baseline", "numerics", bad, "--gpu", "NVIDIA H200", "--root", tmp_path / "b") == EXIT_BASELINE_ERROR
    assert path_for(tmp_path / "b", "nvidia-h200").read_text() == before
    load(path_for(tmp_path / "b", "nvidia-h200"), expected_gpu="NVIDIA H200")


def test_numerics_from_nothing_measured_is_refused(tmp_path):
    empty = write(tmp_path / "m.json", {})
    assert cli("baseline", "numerics", empty, "--gpu", "NVIDIA H200", "--root", tmp_path / "b") != 0
    assert not (tmp_path / "b" / "nvidia-h200").exists()


def test_numerics_with_an_empty_gpu_name_is_refused(tmp_path):
    good = write(tmp_path / "m.json", GOOD_MEASURED)
    assert cli("baseline", "numerics", good, "--gpu", "", "--root", tmp_path / "b") == 2
    assert not (tmp_path / "b" / "cpu").exists()


def test_numerics_error_names_the_measured_file_and_a_numerics_fix(tmp_path, capsys):
    bad = write(tmp_path / "tier-out.json", {"compile": {**GOOD_MEASURED["compile"], "psnr_db": "40"}})
    assert cli("baseline", "numerics", bad, "--gpu", "NVIDIA H200", "--root", tmp_path / "b") == EXIT_BASELINE_ERROR
    err = capsys.readouterr().err
    assert "tier-out.json" in err and "perf-tier.sh" not in err


# == fixed after the attack: the nightly history (fluxperf/cli/nightly.py, fluxperf/nightly/) ================================
def test_history_append_with_a_missing_baseline_path_is_not_silent(tmp_path, capsys):
    slow = write(tmp_path / "slow.json", fake_run({A: noisy(0.13, 20, seed=3)}))
    rc = cli("history", "append", "--records", slow, "--date", "2026-11-05", "--history", tmp_path / "h.jsonl",
             "--baseline", tmp_path / "baselines" / "nvidia-h100-80gb-hbmX")
    assert rc != 0 and "nvidia-h100-80gb-hbmX" in capsys.readouterr().err


def test_history_append_refuses_a_baseline_of_another_gpu(root, tmp_path):
    h200 = write(tmp_path / "h200.json", fake_run({A: noisy(0.1, 20, seed=3)}, gpu="NVIDIA H200"))
    rc = cli("history", "append", "--records", h200, "--date", "2026-11-03", "--history", tmp_path / "h.jsonl",
             "--baseline", root / SLUG)
    assert rc == EXIT_BASELINE_ERROR


def test_history_confirm_never_passes_records_that_were_never_judged(tmp_path):
    slow = write(tmp_path / "slow.json", fake_run({A: noisy(0.13, 20, seed=3)}))
    hist = tmp_path / "h.jsonl"
    assert cli("history", "append", "--records", slow, "--date", "2026-11-05", "--history", hist) == 0
    assert cli("history", "confirm", "--date", "2026-11-05", "--history", hist) != 0


def test_nightly_summary_with_a_non_numeric_tier_status_is_one_line(tmp_path):
    rc = cli("nightly", "summary", "--history", tmp_path / "h.jsonl", "--date", "2026-11-02", "--tier", "perf=abc",
             "--out", tmp_path / "s.md")
    assert rc == 2


@pytest.mark.parametrize("case", ["bad-date", "empty-run"])
def test_history_append_bad_input_is_one_line(tmp_path, case):
    run = fake_run({} if case == "empty-run" else {A: noisy(0.1, 20, seed=3)})
    date = "yesterday" if case == "bad-date" else "2026-11-02"
    rc = cli("history", "append", "--records", write(tmp_path / "r.json", run), "--date", date,
             "--history", tmp_path / "h.jsonl")
    assert rc != 0


# == fixed after the attack: the pytest plugin ================================================================================
TEST_FILE = """
import json, os
from fluxperf.bench.pytest_plugin import judge

def test_step(benchmark, request):
    benchmark.pedantic(lambda: None, rounds=3)
    judge(request.config, {"fullname": request.node.nodeid, "stats": {"data": json.loads(os.environ["FAKE"])},
                           "extra_info": {}})
"""
NODE = "test_step.py::test_step"


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.setenv("FLUXPERF_GPU_NAME", H100)
    monkeypatch.delenv("FLUXPERF_BASELINES", raising=False)
    monkeypatch.setenv("FAKE", json.dumps(noisy(0.131, 20, seed=5)))
    pytester.makeconftest('pytest_plugins = ["fluxperf.bench.pytest_plugin"]\n')
    pytester.makepyfile(test_step=TEST_FILE)
    baseline, _ = bu.build_baseline([("r", fake_run({NODE: noisy(0.131, 20, seed=1)}))], command="test")
    write_to = pytester.path / "baselines" / SLUG / BASELINE_NAME
    write_to.parent.mkdir(parents=True)
    write(write_to, baseline)
    return pytester


run_pytest = run_in_process  # root conftest: no cache provider, fast machine info


def test_compare_fail_never_turns_nothing_measured_into_exit_0(project):
    result = run_pytest(project, "--benchmark-compare", "--benchmark-compare-fail=mean:5%", "--benchmark-skip")
    result.stdout.fnmatch_lines(["*fluxperf outcome: NOT_MEASURED*"])
    assert result.ret == EXIT_NOT_MEASURED


def test_a_benchmark_whose_comparison_crashed_is_not_reported_as_a_pass(project, monkeypatch):
    monkeypatch.setenv("FAKE", json.dumps([math.nan] + noisy(0.131, 19, seed=5)))
    result = run_pytest(project, "--benchmark-compare")
    assert result.ret == 1  # the test itself failed: pytest's status comes first (that part is right)
    assert "fluxperf outcome: PASS" not in result.stdout.str()


def test_numerics_from_identical_images_is_a_60_db_minimum(tmp_path):
    """An infinite measured PSNR (bit-identical images) is a real measurement, not an error."""
    from fluxperf.measure.thresholds import load, path_for

    m = tmp_path / "m.json"
    m.write_text('{"compile": {"psnr_db": Infinity, "forward_rel_err": 0.01, "vae_rel_err": 0.01}}')
    assert cli("baseline", "numerics", m, "--gpu", "NVIDIA H200", "--root", tmp_path / "b") == 0
    t = load(path_for(tmp_path / "b", "nvidia-h200"), expected_gpu="NVIDIA H200")
    assert t.rungs["compile"].psnr_min_db == 60.0 and t.rungs["compile"].measured["psnr_db"] == "inf"
