"""--shard I/N (fluxperf/bench/shard.py): a deterministic, balanced partition of a tier, by module or perf group,
with the all-GPU tests apart; bad values refused in one line; an empty shard exits 14. In-process pytest runs
(pytester) on a small generated tree."""

from __future__ import annotations

import argparse
import random
import re

import pytest
from root_conftest import run_in_process

from fluxperf.bench.pytest_plugin import GROUPS
from fluxperf.bench.shard import (
    ALL_GPU_GROUPS,
    GROUP_COLD_S,
    Shard,
    assign,
    group_plan,
    main,
    parse_shard,
    worst_status,
)

pytest_plugins = ["pytester"]

# module name -> tests in it (uneven on purpose), plus one module marked all_gpus
TREE = {"test_a": 7, "test_b": 1, "test_c": 4, "test_d": 2, "test_e": 3, "test_f": 1}
GROUP_TREE = {"base": 2, "compile": 2, "flags": 1, "float8": 1, "export": 1, "parallel": 2}


def _module(n: int, mark: str = "") -> str:
    return "import pytest\n\n" + "".join(f"{mark}def test_{i}():\n    pass\n\n" for i in range(n))


@pytest.fixture
def tree(pytester):
    pytester.makeconftest('pytest_plugins = ["fluxperf.bench.pytest_plugin"]\n')
    pytester.makepyfile(**{name: _module(n) for name, n in TREE.items()},
                        test_multi=_module(2, "@pytest.mark.all_gpus\n"))
    return pytester


@pytest.fixture
def group_tree(pytester):
    pytester.makeconftest('pytest_plugins = ["fluxperf.bench.pytest_plugin"]\n')
    pytester.makepyfile(test_groups="import pytest\n\n" + "".join(
        f"@pytest.mark.perf_group('{g}')\ndef test_{g}_{i}():\n    pass\n\n" for g, n in GROUP_TREE.items()
        for i in range(n)))
    return pytester


def passed(result) -> list[str]:
    return sorted(r.nodeid for r in result.reprec.getreports("pytest_runtest_logreport")
                  if r.when == "call" and r.passed)


@pytest.mark.parametrize("text, shard", [("0/1", Shard(0, 1)), ("3/4", Shard(3, 4)), (" 1/2 ", Shard(1, 2)),
                                         ("all-gpus", Shard(None, 1))])
def test_parse_shard(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3", "0/65", "", "all"])
def test_parse_shard_refuses_with_the_rule_and_a_fix(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected I/N with 0 <= I < N <= 64.*Fix: e\.g\."):
        parse_shard(text)


def test_bad_shard_on_the_command_line_is_one_usage_line(tree):
    result = run_in_process(tree, "--shard", "2/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [ln for ln in result.errlines if "--shard" in ln and "error" in ln]
    assert len(errors) == 1 and "'2/2': expected I/N" in errors[0]


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_module_shards_partition_the_selection_deterministically_and_balanced(tree, count):
    everything = passed(run_in_process(tree))
    shards = [passed(run_in_process(tree, "--shard", f"{i}/{count}")) for i in range(count)]
    multi = passed(run_in_process(tree, "--shard", "all-gpus"))
    assert multi == [f"test_multi.py::test_{i}" for i in range(2)]
    together = [n for s in shards for n in s] + multi
    assert sorted(together) == everything and len(set(together)) == len(together)  # exactly once each
    modules = [{n.split("::")[0] for n in s} for s in shards]
    assert all(not (a & b) for i, a in enumerate(modules) for b in modules[i + 1:])  # modules stay whole
    loads = [len(s) for s in shards]
    assert max(loads) - min(loads) <= max(TREE.values())  # LPT: within one unit of each other
    assert shards == [passed(run_in_process(tree, "--shard", f"{i}/{count}")) for i in range(count)]


def test_sharding_applies_after_the_other_selections(tree):
    """-k narrows first; the shards split what is left (test_a's 7 tests are gone, so the split changes)."""
    left = passed(run_in_process(tree, "-k", "not test_a"))
    shards = [passed(run_in_process(tree, "-k", "not test_a", "--shard", f"{i}/2")) for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(n for n in left if not n.startswith("test_multi"))
    assert not any(n.startswith("test_a.py") for s in shards for n in s)


def test_an_empty_shard_exits_14_and_says_so(tree):
    result = run_in_process(tree, "-k", "test_b", "--shard", "1/2")  # one module selected, two shards
    assert result.ret == 14
    result.stdout.fnmatch_lines(["*shard 1/2 (by module) selected none of the 1 tests left*exit status 14*"])
    assert run_in_process(tree, "-k", "test_b", "--shard", "0/2").ret == 0


def test_perf_groups_shard_whole_by_cold_time(group_tree):
    """auto picks the group when every test has one; parallel (2 GPUs) only in all-gpus."""
    shards = [passed(run_in_process(group_tree, "--shard", f"{i}/2")) for i in range(2)]
    groups = [{re.match(r".*::test_(\w+)_\d+", n).group(1) for n in s} for s in shards]
    expected, whole = group_plan(list(GROUP_TREE), 2)
    assert groups == [set(g) for g in expected] and whole == ["parallel"]
    assert passed(run_in_process(group_tree, "--shard", "all-gpus")) == [
        f"test_groups.py::test_parallel_{i}" for i in range(2)]
    result = run_in_process(group_tree, "--shard", "0/2")
    result.stdout.fnmatch_lines(["*shard 0/2 (by group)*"])


def test_group_sharding_refuses_tests_without_a_group(tree):
    result = run_in_process(tree, "--shard", "0/2", "--shard-by", "group")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "have no perf_group marker" in "\n".join(result.errlines)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_group_plan_of_the_whole_perf_tier(count):
    assert set(GROUP_COLD_S) == set(GROUPS), "every perf group needs its cold time (one table: GROUP_COLD_S)"
    shards, whole = group_plan(list(GROUPS), count)
    flat = [g for s in shards for g in s] + whole
    assert sorted(flat) == sorted(GROUPS) and len(set(flat)) == len(flat)
    assert whole == list(ALL_GPU_GROUPS)
    loads = [sum(GROUP_COLD_S[g] for g in s) for s in shards]
    assert max(loads) - min(loads) <= max(GROUP_COLD_S.values())
    assert group_plan(list(reversed(GROUPS)), count) == (shards, whole)  # independent of the order given


def test_group_plan_refuses_idle_gpus_and_unknown_groups():
    with pytest.raises(ValueError, match="2 per-GPU group\\(s\\) over 3 GPUs.*Fix: --gpus 2 or fewer"):
        group_plan(["base", "compile"], 3)
    with pytest.raises(ValueError, match="no cold time"):
        group_plan(["nope"], 1)


def test_assign_is_a_balanced_partition_for_random_weights():
    rng = random.Random(0)
    for _ in range(200):
        weights = {f"u{i}": rng.choice([1, 2, 3, 50, 0.5]) for i in range(rng.randint(1, 12))}
        count = rng.randint(1, 5)
        shards = assign(weights, count)
        flat = [u for s in shards for u in s]
        assert sorted(flat) == sorted(weights) and len(shards) == count
        loads = [sum(weights[u] for u in s) for s in shards]
        assert max(loads) - min(loads) <= max(weights.values()) + 1e-9
    with pytest.raises(ValueError, match="positive"):
        assign({"a": 0}, 2)


@pytest.mark.parametrize("statuses, worst", [
    ([0, 0], 0), ([0, 11, 10], 10), ([13, 14], 14), ([10, 12], 12), ([11, 15], 11), ([0, 15], 15),
    ([10, 1], 1), ([14, 137, 2], 137), ([], 0),
])
def test_worst_status_follows_the_judge(statuses, worst):
    assert worst_status(statuses) == worst


def test_command_line(capsys):
    assert main(["groups", "2", "base", "flags", "compile", "parallel"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0 flags", "1 base compile", "all-gpus parallel"]
    assert main(["worst", "0", "10", "11"]) == 0 and capsys.readouterr().out.strip() == "10"
    assert main(["groups", "3", "base"]) == 2 and "leaves a GPU with nothing" in capsys.readouterr().err
    assert main(["gpus", "2"]) == 2 and "shows 0 CUDA GPU(s)" in capsys.readouterr().err  # CPU machine
    assert main(["bogus"]) == 2 and "usage:" in capsys.readouterr().err
