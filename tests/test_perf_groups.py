"""The perf tier's groups partition its benchmarks: every benchmark is in exactly one known group, every group
selects at least one benchmark (collected on CPU; nothing runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fluxperf.bench.pytest_plugin import GROUPS

ROOT = Path(__file__).resolve().parents[1]


def collect(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "-m", "gpu and perf",
                           "perf", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr  # 5: nothing collected
    return [line for line in proc.stdout.splitlines() if "::" in line]


@pytest.fixture(scope="module")
def by_group() -> dict[str, list[str]]:
    return {group: collect("--perf-group", group) for group in GROUPS}


def test_every_group_selects_benchmarks(by_group):
    empty = [g for g, ids in by_group.items() if not ids]
    assert not empty, f"perf groups with no benchmark: {empty}"


def test_groups_partition_the_perf_tier(by_group):
    everything = collect()
    grouped = [i for ids in by_group.values() for i in ids]
    assert sorted(grouped) == sorted(everything), "a benchmark is in no group or in two"


def test_dev_and_kontext_benchmarks_are_grouped(by_group):
    assert by_group["dev_cache"] == [f"perf/test_variants.py::test_dev_image[{c}]"
                                     for c in ("uncached", "cache_dit_f1b0", "fbcache")]
    assert sorted(by_group["kontext"]) == ["perf/test_variants.py::test_kontext_image",
                                           "perf/test_variants.py::test_kontext_step"]


def test_unknown_group_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "perf",
                           "--perf-group", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4 and "unknown group" in proc.stdout + proc.stderr
