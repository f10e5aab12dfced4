"""The perf tier's groups partition its benchmarks: every benchmark is in exactly one known group, every group
selects at least one benchmark (collected on CPU; nothing runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fluxperf.bench.pytest_plugin import GROUPS

ROOT = Path(__file__).resolve().parents[1]


_REPORTER = """
def pytest_collection_finish(session):
    for item in session.items:
        marker = item.get_closest_marker("perf_group")
        print("GROUP", item.nodeid, marker.args[0] if marker and marker.args else "-")
"""


def collect(*args: str, plugin_dir: Path | None = None) -> list[str]:
    """Node ids the perf tier collects with `args` (one pytest --co subprocess; CPU, nothing runs). With
    plugin_dir, a reporter plugin also prints each item's perf_group marker ("GROUP <nodeid> <group>")."""
    import os

    env, extra = dict(os.environ), []
    if plugin_dir is not None:
        (plugin_dir / "group_reporter.py").write_text(_REPORTER)
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), env.get("PYTHONPATH", "")])
        extra = ["-p", "group_reporter"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *extra, "-m",
                           "gpu and perf", "perf", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr  # 5: nothing collected
    return proc.stdout.splitlines()


def _ids(lines: list[str]) -> list[str]:
    return [line for line in lines if "::" in line and not line.startswith("GROUP ")]


@pytest.fixture(scope="module")
def collected(gpu_tier_collection) -> dict[str, str]:
    """nodeid -> its perf_group marker, for the perf tier's benchmarks (gpu and perf), from the session's ONE
    collection (root conftest's gpu_tier_collection: the per-group collections cost 85 s of CI)."""
    return {node: group for node, (group, marks) in gpu_tier_collection.items()
            if node.startswith("perf/") and "perf" in marks}


@pytest.fixture(scope="module")
def by_group(collected) -> dict[str, list[str]]:
    return {group: [n for n, g in collected.items() if g == group] for group in GROUPS}


def test_perf_group_option_selects_exactly_the_marked_benchmarks(by_group):
    """The selection itself (--perf-group, comma-separated and repeated) keeps the marked items, no others."""
    picked = ["dev_cache", "kontext", "export"]
    got = _ids(collect("--perf-group", "dev_cache,kontext", "--perf-group", "export"))
    assert sorted(got) == sorted(n for g in picked for n in by_group[g])


def test_every_group_selects_benchmarks(by_group):
    empty = [g for g, ids in by_group.items() if not ids]
    assert not empty, f"perf groups with no benchmark: {empty}"


def test_groups_partition_the_perf_tier(by_group, collected):
    grouped = [i for ids in by_group.values() for i in ids]
    assert sorted(grouped) == sorted(collected), "a benchmark is in no group or in an unknown one"
    assert len(set(grouped)) == len(grouped)


def test_dev_and_kontext_benchmarks_are_grouped(by_group):
    assert by_group["dev_cache"] == [f"perf/test_variants.py::test_dev_image[{c}]"
                                     for c in ("uncached", "cache_dit_f1b0", "fbcache")]
    assert sorted(by_group["kontext"]) == ["perf/test_variants.py::test_kontext_image",
                                           "perf/test_variants.py::test_kontext_step"]


def test_unknown_group_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "perf",
                           "--perf-group", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4 and "unknown group" in proc.stdout + proc.stderr
