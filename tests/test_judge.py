"""The one judge: verdict text, field-by-field validation of what it reads, and the offline check's statuses.

Each test is one of the silent passes of the "one judge" issue; the name says which.
"""

from __future__ import annotations

import json
import math

import pytest

from fluxperf.bench import (
    EXIT_BASELINE_ERROR,
    EXIT_INCONCLUSIVE,
    EXIT_NOT_MEASURED,
    EXIT_REGRESSION,
)
from fluxperf.bench import baseline_update as bu
from fluxperf.bench.baseline import BASELINE_NAME, load_baseline
from fluxperf.bench.compare import compare_records
from fluxperf.bench.fakes import H100, fake_calibration, fake_run, noisy
from fluxperf.bench.judge import Verdict, judge_run, most_severe
from fluxperf.cli import main
from fluxperf.errors import BaselineError

NAME = "perf/test_ladder.py::test_transformer_step[compile]"
SLUG = "nvidia-h100-80gb-hbm3"


def stored(tmp_path, samples=None, extra=None):
    run = tmp_path / "base-run.json"
    run.write_text(json.dumps(fake_run({NAME: samples or noisy(0.131, 20, seed=1)}, extra_info=extra)))
    return bu.update_baseline([run], root=tmp_path / "baselines", command="test")[0]


def write(path, doc):
    path.write_text(json.dumps(doc))
    return path


# -- verdict text ------------------------------------------------------------------------------------------
def test_headline_names_the_proxy_that_decided_and_never_says_within_on_a_regression_line():
    base = fake_run({NAME: noisy(0.131, 20, seed=1)}, extra_info={"proxies": {"kernels_per_step": 1540}})
    cur = fake_run({NAME: [x * 1.026 for x in noisy(0.131, 20, seed=1)]},
                   extra_info={"proxies": {"kernels_per_step": 1541}})
    c = compare_records(cur["benchmarks"][0], base["benchmarks"][0], thresholds={"time": 0.03})
    lines = c.message().splitlines()
    assert c.outcome == "regression"
    assert lines[0].startswith(f"REGRESSION {NAME}: decided by kernels_per_step: kernels_per_step grew from 1540 to 1541")
    assert "within" not in lines[0]
    time_line = next(line for line in lines if line.strip().startswith("time ("))
    assert time_line.strip().startswith("time (pass)") and "+2.6%" in time_line


# -- validation: every number finite, no booleans, ranges, relabelling -------------------------------------
def _mutate(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


BAD_FIELDS = {
    "time threshold 5.0 would let +50% pass": lambda d: d["fluxperf"]["thresholds"][NAME].update(time=5.0),
    "string threshold": lambda d: d["fluxperf"]["thresholds"][NAME].update(time="0.03"),
    "boolean threshold": lambda d: d["fluxperf"]["thresholds"][NAME].update(time=True),
    "thresholds as a list": lambda d: d["fluxperf"].update(thresholds=[0.03]),
    "calibration.before missing": lambda d: d["benchmarks"][0]["extra_info"]["calibration"].pop("before"),
    "calibration.before a list": lambda d: d["benchmarks"][0]["extra_info"]["calibration"].update(before=[1.4]),
    "calibration ms infinite": lambda d: d["benchmarks"][0]["extra_info"]["calibration"]["after"]["copy"].update(
        ms=math.inf),
    "machine_info a string": lambda d: d.update(machine_info="H100"),
    "relabelled slug": lambda d: d["fluxperf"].update(gpu_slug="nvidia-h200"),
    "sample true": lambda d: d["benchmarks"][0]["stats"]["data"].__setitem__(0, True),
    "sample Infinity": lambda d: d["benchmarks"][0]["stats"]["data"].__setitem__(0, math.inf),
    "proxy boolean": lambda d: d["benchmarks"][0]["extra_info"]["proxies"].update(kernels_per_step=True),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_every_field_is_validated_on_load_and_check_exits_12(tmp_path, case, capsys):
    calib = {"before": fake_calibration(), "after": fake_calibration(1.01)}
    path = stored(tmp_path, extra={"calibration": calib, "proxies": {"kernels_per_step": 1540}})
    _mutate(path, BAD_FIELDS[case])
    with pytest.raises(BaselineError) as err:
        load_baseline(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    run = write(tmp_path / "run.json", fake_run({NAME: noisy(0.131, 20, seed=2)}, gpu=H100))
    assert main(["baseline", "check", str(run), "--root", str(tmp_path / "baselines")]) == EXIT_BASELINE_ERROR


def test_a_relabelled_file_is_refused_even_on_the_gpu_it_claims(tmp_path):
    path = stored(tmp_path)
    target = tmp_path / "baselines" / "nvidia-h200" / BASELINE_NAME
    target.parent.mkdir()
    data = json.loads(path.read_text())
    data["fluxperf"]["gpu_slug"] = "nvidia-h200"
    data["machine_info"]["fluxperf"]["slug"] = "nvidia-h200"  # machine_info.gpu.name still says H100
    write(target, data)
    with pytest.raises(BaselineError, match="does not match the recorded GPU name 'NVIDIA H100 80GB HBM3'"):
        load_baseline(target, expected_slug="nvidia-h200")


def test_update_refuses_a_throttled_or_drifting_record_by_name(tmp_path):
    throttled = {"monitor": {"verdict": {"throttled": True, "reasons": ["hw_thermal in 9/10 samples"]}}}
    with pytest.raises(BaselineError, match=r"run.json: 'perf/.*compile\]': the GPU throttled"):
        stored(tmp_path, extra=throttled)
    drifting = {"calibration": {"before": fake_calibration(), "after": fake_calibration(1.3)}}
    with pytest.raises(BaselineError, match="calibration drift 30.0% > 15%"):
        stored(tmp_path, extra=drifting)
    assert not (tmp_path / "baselines" / SLUG / BASELINE_NAME).exists()


# -- the offline check -----------------------------------------------------------------------------------
def test_check_refuses_older_run_formats_with_12(tmp_path, capsys):
    stored(tmp_path)
    run = fake_run({NAME: noisy(0.131, 20)})
    del run["benchmarks"][0]["stats"]["data"]
    assert main(["baseline", "check", str(write(tmp_path / "old.json", run)), "--root",
                 str(tmp_path / "baselines")]) == EXIT_BASELINE_ERROR
    assert "stats.data" in capsys.readouterr().err
    run = fake_run({NAME: noisy(0.131, 20)})
    del run["benchmarks"][0]["fullname"]
    assert main(["baseline", "check", str(write(tmp_path / "old2.json", run)), "--root",
                 str(tmp_path / "baselines")]) == EXIT_BASELINE_ERROR


def test_check_prints_the_verdict_before_a_report_failure_and_keeps_its_status(tmp_path, capsys):
    stored(tmp_path)
    slow = write(tmp_path / "slow.json", fake_run({NAME: [x * 1.06 for x in noisy(0.131, 20, seed=3)]}))
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    rc = main(["baseline", "check", str(slow), "--root", str(tmp_path / "baselines"), "--report", str(blocked / "r")])
    captured = capsys.readouterr()
    assert rc == EXIT_REGRESSION
    assert "fluxperf outcome: REGRESSION" in captured.out and "report not written" in captured.err


def test_a_baselined_benchmark_missing_from_the_run_is_inconclusive_offline(tmp_path, capsys):
    other = "perf/test_ladder.py::test_transformer_step[fused_qkv]"
    run = write(tmp_path / "two.json", fake_run({NAME: noisy(0.131, 20, seed=1), other: noisy(0.131, 20, seed=2)}))
    bu.update_baseline([run], root=tmp_path / "baselines", command="t")
    one = fake_run({NAME: noisy(0.131, 20, seed=4)})
    one["fluxperf"]["selected"] = [NAME, other]  # selected, but `other` was skipped
    assert main(["baseline", "check", str(write(tmp_path / "one.json", one)), "--root",
                 str(tmp_path / "baselines")]) == EXIT_INCONCLUSIVE
    assert f"baselined but did not run (1; skipped or errored, so not compared): {other}" in capsys.readouterr().out


def test_outcome_severity_and_nothing_measured():
    assert most_severe(["pass", "inconclusive", "no_baseline"]) == "no_baseline"
    assert most_severe(["regression", "not_measured", "baseline_error"]) == "baseline_error"
    assert Verdict(measured=0).exit_status == EXIT_NOT_MEASURED
    base = json.loads(json.dumps({"benchmarks": [], "fluxperf": {"thresholds": {}}, "machine_info": {}}))
    assert judge_run([], base).outcome == "not_measured"
