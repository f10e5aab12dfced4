"""fluxperf.env: provenance facts recorded with every result."""

from __future__ import annotations


def test_git_commit_falls_back_to_the_environment_outside_a_checkout(tmp_path, monkeypatch):
    from fluxperf.env import git_commit

    for var in ("FLUXPERF_GIT_COMMIT", "GITHUB_SHA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path counts
    assert git_commit(cwd=str(tmp_path)) is None
    monkeypatch.setenv("GITHUB_SHA", "b" * 40)
    assert git_commit(cwd=str(tmp_path)) == "b" * 40
    monkeypatch.setenv("FLUXPERF_GIT_COMMIT", "a" * 40)
    assert git_commit(cwd=str(tmp_path)) == "a" * 40
