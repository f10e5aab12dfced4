"""scripts/tiers/gpu-tier.sh and perf-tier.sh `--gpus N` on CPU, with a stand-in for pytest (FLUXPERF_TIER_PYTEST)
that reports its shard, GPUs, core affinity and FLUXPERF_GPU_COUNT and exits with a chosen status."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from fluxperf.bench.pytest_plugin import GROUPS
from fluxperf.bench.shard import ALL_GPU_GROUPS

ROOT = Path(__file__).resolve().parents[1]
# FAKE_RC_<shard or group, / and - as _>: its exit status; writes a numerics record / benchmark JSON as the tiers do
FAKE = r"""#!/usr/bin/env bash
shard=none; group=none; json=; prev=
for a in "$@"; do
  [ "$prev" = --shard ] && shard=$a; [ "$prev" = --perf-group ] && group=$a; prev=$a
  case "$a" in --benchmark-json=*) json=${a#*=} ;; esac
done
affinity=$(taskset -cp $$ 2>/dev/null | sed 's/.*: //')
echo "ARGS $*"
echo "FAKE shard=$shard group=$group devices=$CUDA_VISIBLE_DEVICES count=${FLUXPERF_GPU_COUNT:-1} affinity=${affinity:-?}"
key=$(echo "$shard" | tr '/-' '__'); [ "$group" != none ] && key=$group
[ "$shard" != none ] && echo "{\"rung_$key\": {\"psnr_db\": 40}}" > "$OUT/numerics-measured.json"
[ -n "$json" ] && echo '{}' > "$json"
rc_var="FAKE_RC_$key"; exit "${!rc_var:-0}"
"""


def tier(tmp_path, script: str, *args: str, fake: bool = True, **env_extra: str):
    (tmp_path / "fake-pytest.sh").write_text(FAKE)
    # the libstdc++ preload probe (a torch import, ~3 s) is tested in test_aoti_loader.py; only the plain run keeps it
    env = {**os.environ, "OUT": str(tmp_path / "out"), "FLUXPERF_NO_PRELOAD": "1", **env_extra}
    env.pop("FLUXPERF_GPU_COUNT", None)
    if fake:
        env["FLUXPERF_TIER_PYTEST"] = f"bash {tmp_path / 'fake-pytest.sh'}"
    return subprocess.run(["bash", str(ROOT / "scripts" / "tiers" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def fake_lines(text: str) -> list[dict]:
    return [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in text.splitlines() if line.startswith("FAKE ")]


@pytest.mark.parametrize("script, args", [("gpu-tier.sh", []), ("perf-tier.sh", ["base"])])
@pytest.mark.parametrize("value", ["0", "9", "two", ""])
def test_bad_gpus_value_is_one_line_before_any_work(tmp_path, script, args, value):
    done = tier(tmp_path, script, *args, "--gpus", *([value] if value else []))
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if "--gpus" in ln]
    assert len(lines) == 1 and f"--gpus '{value}'" in lines[0] and "Fix: e.g. --gpus 2" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()  # refused before the environment was set up


def test_more_gpus_than_the_machine_shows_is_refused(tmp_path):
    done = tier(tmp_path, "gpu-tier.sh", "--gpus", "2", fake=False, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 2 and "shows 0 CUDA GPU(s)" in done.stderr, done.stdout + done.stderr


def test_gpu_tier_runs_one_shard_per_gpu_then_the_all_gpu_tests(tmp_path):
    done = tier(tmp_path, "gpu-tier.sh", "--gpus", "2", "-k", "numerics", CUDA_VISIBLE_DEVICES="4,6",
                FAKE_RC_1_2="11", FAKE_RC_all_gpus="14")
    out = tmp_path / "out"
    log = (out / "gpu-tier.log").read_text()
    assert done.returncode == 14, done.stdout + done.stderr  # not_measured (14) is more severe than 11
    runs = {r["shard"]: r for r in fake_lines(log)}
    assert sorted(runs) == ["0/2", "1/2", "all-gpus"]
    assert (runs["0/2"]["devices"], runs["1/2"]["devices"], runs["all-gpus"]["devices"]) == ("4", "6", "4,6")
    ncpu = os.cpu_count()
    if runs["0/2"]["affinity"] != "?" and ncpu >= 2:  # taskset present: disjoint core slices
        assert runs["0/2"]["affinity"] != runs["1/2"]["affinity"]
    assert all(r["count"] == "1" for r in runs.values())
    for part in ("shard0", "shard1", "all-gpus"):
        assert (out / part / "status").exists() and (out / part / "gpu-tier-fingerprint.json").exists()
    assert json.loads((out / "numerics-measured.json").read_text()).keys() == {"rung_0_2", "rung_1_2",
                                                                               "rung_all_gpus"}
    assert "part statuses [0 11 14]" in log
    args = [ln for ln in log.splitlines() if ln.startswith("ARGS ")]
    assert len(args) == 3 and all(a.endswith("-k numerics") and "-m gpu and not perf" in a for a in args)


def test_gpu_tier_without_gpus_option_is_one_plain_run(tmp_path):
    done = tier(tmp_path, "gpu-tier.sh", "-x", FLUXPERF_NO_PRELOAD="0", LD_PRELOAD="")
    log = (tmp_path / "out" / "gpu-tier.log").read_text()
    runs = fake_lines(log)
    assert done.returncode == 0 and [r["shard"] for r in runs] == ["none"]
    # the preload probe ran (scripts/tiers/aoti-preload.sh): it preloads the system libstdc++, or says why not
    from fluxperf.steps.export.loader import system_libstdcxx

    assert ("aoti-preload:" in done.stderr) == (system_libstdcxx() is not None), done.stderr


def test_no_preload_switch_leaves_ld_preload_alone(tmp_path):
    done = tier(tmp_path, "gpu-tier.sh", LD_PRELOAD="")
    assert done.returncode == 0 and "aoti-preload" not in done.stderr
    assert (tmp_path / "out" / "gpu-tier.log").read_text().startswith("gpu-tier: LD_PRELOAD=unset")


def test_perf_tier_shards_whole_groups_and_runs_parallel_on_both_gpus(tmp_path):
    done = tier(tmp_path, "perf-tier.sh", "all", "--gpus", "2", "--compare", FAKE_RC_flags="10", FAKE_RC_base="11")
    log = (tmp_path / "out" / "perf-all.log").read_text()
    assert done.returncode == 10, done.stdout + done.stderr
    runs = fake_lines(log)
    assert sorted(r["group"] for r in runs) == sorted(GROUPS)  # every group exactly once
    by_group = {r["group"]: r for r in runs}
    for group, span in ALL_GPU_GROUPS.items():
        assert (by_group[group]["devices"], by_group[group]["count"]) == (",".join(map(str, range(span))), str(span))
    per_gpu = [r for r in runs if r["group"] not in ALL_GPU_GROUPS]
    assert {r["devices"] for r in per_gpu} == {"0", "1"} and all(r["count"] == "1" for r in per_gpu)
    assert re.search(r"plan: 0 [\w ]+;1 [\w ]+;all-gpus parallel", log)


def test_perf_tier_single_gpu_leaves_multi_gpu_groups_out_of_all_and_refuses_them_by_name(tmp_path):
    done = tier(tmp_path, "perf-tier.sh", "all")
    log = (tmp_path / "out" / "perf-all.log").read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["group"] for r in fake_lines(log)] == [g for g in GROUPS if g not in ALL_GPU_GROUPS]  # GROUPS' order
    assert "groups [parallel] left out of 'all': they span several GPUs" in log
    done = tier(tmp_path, "perf-tier.sh", "parallel")
    assert done.returncode == 2 and "Fix: scripts/tiers/perf-tier.sh parallel --gpus 2" in done.stderr


def test_perf_tier_group_list_over_two_gpus(tmp_path):
    done = tier(tmp_path, "perf-tier.sh", "base,flags", "--gpus", "2")
    runs = fake_lines((tmp_path / "out" / "perf-base,flags.log").read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted((r["group"], r["count"]) for r in runs) == [("base", "1"), ("flags", "1")]
    assert {r["devices"] for r in runs} == {"0", "1"}  # one group per GPU, at the same time


def test_perf_tier_refuses_a_gpu_with_nothing_to_run(tmp_path):
    done = tier(tmp_path, "perf-tier.sh", "compile", "--gpus", "2")
    assert done.returncode == 2 and "1 per-GPU group(s) over 2 GPUs leaves a GPU with nothing" in done.stderr
