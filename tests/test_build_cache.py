"""Which perf benchmarks keep their Inductor build between device commands (fluxperf.bench.build_cache): the export
rung and max-autotune compiles (compile_faithful did not finish in one H200 command), each in its own directory."""

from __future__ import annotations

import os

import pytest

from fluxperf.bench.build_cache import EXPORT_PACKAGES_ENV, build_cache, kept_build_dir, long_build, resumed_build
from fluxperf.ladder import recipe_from


@pytest.mark.parametrize("name, long", [("export", True), ("compile_faithful", True), ("compile", False),
                                        ("flags", False), ("bf16", False), ("float8", False)])
def test_long_builds_are_export_and_max_autotune(name, long):
    assert long_build(recipe_from(name)) is long


def test_each_long_build_keeps_its_own_directory_and_says_when_it_resumes(tmp_path):
    env = {EXPORT_PACKAGES_ENV: str(tmp_path)}
    faithful, export, compile_ = (recipe_from(n) for n in ("compile_faithful", "export", "compile"))
    assert kept_build_dir(faithful, env) == os.path.join(tmp_path, "inductor", "compile_faithful")
    assert kept_build_dir(export, env) == os.path.join(tmp_path, "inductor", "export")
    assert kept_build_dir(compile_, env) is None  # a regional default-mode compile is measured cold every time
    assert kept_build_dir(faithful, {}) is None and kept_build_dir(faithful, {EXPORT_PACKAGES_ENV: ""}) is None
    assert not resumed_build(faithful, env)
    os.makedirs(kept_build_dir(export, env))
    (tmp_path / "inductor" / "export" / "fxgraph").mkdir()
    assert resumed_build(export, env) and not resumed_build(faithful, env)  # another rung's files do not count


def test_build_cache_points_inductor_at_the_kept_directory_and_restores_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    env = {EXPORT_PACKAGES_ENV: str(tmp_path)}
    with build_cache(recipe_from("compile_faithful"), env):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(tmp_path, "inductor", "compile_faithful")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert (tmp_path / "inductor" / "compile_faithful").is_dir()  # kept afterwards
    with build_cache(recipe_from("compile"), env):
        fresh = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        assert not fresh.startswith(str(tmp_path))
    assert not os.path.exists(fresh)  # a fresh cache is deleted after


def test_a_kept_build_root_that_is_a_file_is_refused_naming_variable_and_fix(tmp_path):
    from fluxperf.errors import FluxperfError

    afile = tmp_path / "packages"
    afile.write_text("not a directory")
    with pytest.raises(FluxperfError, match=rf"{EXPORT_PACKAGES_ENV}=.*packages' is not a directory.*Fix:"):
        kept_build_dir(recipe_from("export"), {EXPORT_PACKAGES_ENV: str(afile)})
    assert kept_build_dir(recipe_from("compile"), {EXPORT_PACKAGES_ENV: str(afile)}) is None  # not a long build
