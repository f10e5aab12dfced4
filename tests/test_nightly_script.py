"""scripts/tiers/nightly.sh end to end on CPU, with fake numerics and perf tiers (no GPU, no network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fluxperf.bench.kernels import kernel_table_path, save_kernel_table, table_from_records
from fluxperf.nightly.history import append_entries, entries_from_benchmark_json, load_history
from fluxperf.nightly.synthetic import benchmark_doc, noisy

ROOT = Path(__file__).resolve().parents[1]
NAME = "perf/test_nightly_fake.py::test_step[bf16]"
BASE_KERNELS = [{"name": "gemm_bf16", "count": 4, "cuda_time_us": 400.0},
                {"name": "flash_fwd", "count": 2, "cuda_time_us": 100.0}]
SLOW_KERNELS = [{"name": "gemm_bf16", "count": 4, "cuda_time_us": 520.0},
                {"name": "flash_fwd", "count": 2, "cuda_time_us": 100.0},
                {"name": "injected_cast_fp32", "count": 2, "cuda_time_us": 60.0}]
# The fake perf tier, with scripts/tiers/perf-tier.sh's interface (GROUP --compare [-- PYTEST_ARGS]) and outputs
# ($OUT/perf-GROUP.tar.gz with every group's JSON): a regressed record, with a kernel table when asked.
FAKE_PERF = f"""#!/usr/bin/env bash
echo "perf-tier args: $*"
group=$1; shift; [ "$1" = --compare ] || exit 2; shift
for a in "$@"; do [ "$a" = --fluxperf-kernel-tables ] && kt=1; done
work=$(mktemp -d); mkdir -p "$OUT"
{sys.executable} -m fluxperf.nightly.synthetic "$work/$group.json" --name '{NAME}' --median 130 \\
  --verdict regression ${{kt:+--kernel-table "$FAKE_KERNELS"}} || exit 99
tar -czf "$OUT/perf-$group.tar.gz" -C "$work" . && cp "$work/$group.json" "$OUT/$group.json"
exit 10
"""


def run(tmp_path, *args, index="http://127.0.0.1:9/nightly", env_extra=None):
    fake_perf = tmp_path / "perf-tier.sh"
    fake_perf.write_text(FAKE_PERF)
    fake_gpu = tmp_path / "gpu-tier.sh"
    fake_gpu.write_text('echo "fake numerics tier, OUT=$OUT, args: $*"; exit 0\n')
    env = {**os.environ, "FLUXPERF_TORCH_INDEX": index, "NIGHTLY_GPU_TIER": str(fake_gpu),
           "NIGHTLY_PERF_TIER": str(fake_perf), "FLUXPERF_BASELINES": str(tmp_path / "baselines"),
           "FLUXPERF_HISTORY": str(tmp_path / "history.jsonl"), "OUT": str(tmp_path / "out"),
           "FAKE_KERNELS": json.dumps(SLOW_KERNELS), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
           "FLUXPERF_NO_PRELOAD": "1",  # the preload probe (a torch import) is tested in test_aoti_loader.py
           **(env_extra or {})}
    env.pop("NIGHTLY_ALLOW_INSTALLED", None)
    return subprocess.run(["bash", str(ROOT / "scripts" / "tiers" / "nightly.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_unreachable_index_is_detected_and_refused_without_permission(tmp_path):
    done = run(tmp_path, "--date", "2026-11-22")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nightly install impossible" in done.stdout + done.stderr and "--allow-installed" in done.stdout
    assert not (tmp_path / "history.jsonl").exists()  # nothing ran


@pytest.mark.slow
def test_allowed_offline_run_confirms_explains_plots_and_summarizes(tmp_path):
    # five earlier healthy nightlies in the history, and a baseline kernel table for the benchmark
    for day in range(17, 22):
        doc = benchmark_doc({NAME: noisy(100.0, 12, seed=day)}, verdicts={NAME: "pass"})
        append_entries(tmp_path / "history.jsonl",
                       entries_from_benchmark_json(doc, date=f"2026-11-{day}", run_id=f"r{day}"))
    save_kernel_table(table_from_records(BASE_KERNELS), kernel_table_path(tmp_path / "baselines/cpu/kernels", NAME))

    done = run(tmp_path, "--allow-installed", "--date", "2026-11-22")
    out = tmp_path / "out"
    log = done.stdout + done.stderr
    assert done.returncode == 10, log  # confirmed by the re-run: the workflow fails
    # --gpus all (the default) on a runner showing no GPU: both tiers run as one worker
    assert "tiers sharded over 1 GPU(s) (this runner shows 0)" in log and "args: --gpus 1" in log
    assert "perf-tier args: all --compare --gpus 1" in log
    summary = (out / "summary.md").read_text()
    assert "nightly install impossible" in summary and "torch under test" in summary
    assert "**confirmed**" in summary and "regressed again on re-run" in summary
    assert "injected_cast_fp32" in summary and "| new |" in summary  # the kernel diff explains it
    tonight = [e for e in load_history(tmp_path / "history.jsonl") if e["date"] == "2026-11-22"]
    assert sorted(e["attempt"] for e in tonight) == [1, 2] and {e["verdict"] for e in tonight} == {"regression"}
    assert (out / "plots" / kernel_table_path("", NAME).with_suffix(".png").name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "flagged.txt").read_text().split() == [NAME]
    assert json.loads((out / "changepoints.json").read_text()).keys() == {NAME}


@pytest.mark.slow
def test_a_nightly_where_nothing_ran_is_not_green(tmp_path):
    """Every test skipped (no CUDA): the real tiers exit 14 (the plugin's 'nothing measured'); the nightly fails."""
    nothing = tmp_path / "nothing-ran.sh"
    nothing.write_text('echo "80 skipped: no CUDA (args: $*)"; exit 14\n')
    done = run(tmp_path, "--skip-install", "--date", "2026-11-22", "--gpus=1",
               env_extra={"NIGHTLY_GPU_TIER": str(nothing), "NIGHTLY_PERF_TIER": str(nothing)})
    assert done.returncode != 0, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| numerics | 14 | nothing measured |" in summary and "| perf | 14 | nothing measured |" in summary
    assert "(args: --gpus 1)" in done.stdout and "(args: all --compare --gpus 1)" in done.stdout  # --gpus reaches both


@pytest.mark.parametrize("value", ["0", "9", "two", ""])
def test_a_bad_gpu_count_is_refused_before_anything_runs(tmp_path, value):
    done = run(tmp_path, "--skip-install", "--gpus", value)
    assert done.returncode == 64 and f"--gpus '{value}'" in done.stderr and "Fix: e.g. --gpus 2" in done.stderr
    assert not (tmp_path / "out" / "nightly.log").exists()
