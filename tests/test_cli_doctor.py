"""`fluxperf doctor`: one line per item, --json, exit status 1 only for a real problem (issue 14.1)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from fluxperf.cli import doctor, main
from fluxperf.steps.export import loader as al

ITEMS = ["torch", "gpu", "fa3", "torchao", "cache-dit", "nvml", "aoti"]


def test_quick_report_one_line_per_item(capsys):
    assert main(["doctor", "--no-aoti"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ITEMS
    assert all(line.split()[0] in ("ok", "missing", "info") for line in lines)
    assert "skipped (--no-aoti)" in lines[-1]


def test_json_report(capsys):
    assert main(["doctor", "--no-aoti", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["item"] for r in report] == ITEMS
    torch_facts = report[0]["facts"]
    import torch

    assert torch_facts["torch"] == torch.__version__ and torch_facts["cuda_available"] == torch.cuda.is_available()
    for name, key in (("torchao", "torchao"), ("cache-dit", "cache_dit")):
        from fluxperf.optional import find_module

        item = next(r for r in report if r["item"] == name)
        assert item["status"] == ("ok" if find_module(key) else "missing")


def test_missing_optional_packages_are_reported_not_failures(monkeypatch, capsys):
    from fluxperf import optional

    monkeypatch.setattr(optional, "find_module", lambda name: None)
    items = {i.item: i for i in doctor.collect(aoti=False)}
    assert items["torchao"].status == "missing" and "pip install 'fluxperf[torchao]'" in items["torchao"].detail
    assert items["nvml"].status == "missing" and items["cache-dit"].status == "missing"
    assert not any(i.status == "FAIL" for i in items.values())


# -- the AOTInductor libstdc++ check ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def static_lib(tmp_path_factory):
    """A C++ library carrying its own libstdc++ (-static-libstdc++), as the H200 image's wrappers do."""
    gxx = shutil.which("g++")
    if gxx is None or not sys.platform.startswith("linux"):
        pytest.skip("needs g++ on Linux")
    tmp = tmp_path_factory.mktemp("doctor")
    (tmp / "x.cpp").write_text('#include <regex>\nextern "C" int f(const char* s) '
                               '{ return std::regex_match(s, std::regex("cuda:[0-9]")); }\n')
    out = tmp / "static.so"
    proc = subprocess.run([gxx, "-shared", "-fPIC", "-static-libstdc++", str(tmp / "x.cpp"), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"g++ -static-libstdc++ fails here: {proc.stderr[-300:]}")
    return out


def _fake_build(monkeypatch, library):
    """The child that builds the tiny package writes a .pt2-shaped archive around `library` instead (no torch)."""
    code = ("import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z:\n"
            f"    z.write({str(library)!r}, 'tiny/data/aotinductor/model/w.wrapper.so')\n")
    monkeypatch.setattr(doctor, "_BUILD_TINY", code)


@pytest.mark.parametrize("preloaded", [False, True])
def test_aoti_check_carrying_wrapper(monkeypatch, static_lib, preloaded):
    _fake_build(monkeypatch, static_lib)
    state = al.ProcessState(preloaded, ("/usr/lib/x86_64-linux-gnu/libstdc++.so.6",) if preloaded else (), ())
    monkeypatch.setattr(al, "process_state", lambda: state)
    item = doctor.aoti_item()
    assert item.facts["wrappers"][0]["carries_libstdcxx"] is True
    if preloaded:
        assert item.status == "ok" and "the preload is set" in item.detail
    else:
        assert item.status == "FAIL" and "LD_PRELOAD=" in item.detail and "segfault" in item.detail


def test_aoti_check_build_failure_is_a_problem(monkeypatch):
    monkeypatch.setattr(doctor, "_BUILD_TINY", "raise SystemExit('error: g++ not found')")
    item = doctor.aoti_item()
    assert item.status == "FAIL" and "g++ not found" in item.detail and "C++ compiler" in item.detail


def test_exit_status_is_one_only_for_a_failure(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "aoti_item", lambda: doctor.Item("aoti", doctor.FAIL, "broken"))
    assert main(["doctor"]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("FAIL    aoti")


@pytest.mark.slow
@pytest.mark.export
def test_full_report_builds_a_real_tiny_package(capsys):
    """The real check on this machine: torch builds a tiny CPU package; its wrapper is inspected, not loaded."""
    rc = main(["doctor", "--json"])
    aoti = json.loads(capsys.readouterr().out)[-1]
    assert aoti["item"] == "aoti" and aoti["facts"]["wrappers"], aoti
    wrapper = aoti["facts"]["wrappers"][0]
    assert wrapper["library"].endswith(".so") and wrapper["error"] is None
    needs = wrapper["carries_libstdcxx"] and not al.process_state().global_scope
    assert (aoti["status"] == "FAIL") == bool(needs) and rc == (1 if needs else 0)
