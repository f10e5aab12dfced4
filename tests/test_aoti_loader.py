"""fluxperf.steps.export.loader / fluxperf.steps.export.elf: a package whose native code would crash the process is detected from its
ELF metadata (never by loading it) and refused with the LD_PRELOAD fix; everything else loads (issue 14.1).

Real shared libraries stand in for AOTInductor wrappers: one C++ library linked against libstdc++ dynamically (what
torch 2.13 builds here) and the same source built with -static-libstdc++ (what the H200 image's torch 2.11 builds:
its own copy of the C++ runtime inside). The static one really aborts/segfaults a Python process that has imported
torch unless the system libstdc++ is preloaded — the test shows the decision predicts exactly that.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest

from fluxperf.steps.export import loader as al
from fluxperf.steps.export.elf import ElfError, read_elf_info

# std::regex over a device string: the code path the H200 crash went through (parse_device_str)
SOURCE = r"""
#include <regex>
#include <string>
extern "C" int match_device(const char* s) {
  std::regex r("(cuda|cpu):?([0-9]*)");
  return std::regex_match(std::string(s), r) ? 1 : 0;
}
"""
SYSTEM_LIB = al.system_libstdcxx()
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF shared libraries: Linux only")


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """{"dynamic": path, "static": path}: the same C++ source linked both ways (skips without g++ or libstdc++.a)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ to build the test libraries")
    tmp = tmp_path_factory.mktemp("elf")
    (tmp / "lib.cpp").write_text(SOURCE)
    out = {}
    for kind, flags in (("dynamic", []), ("static", ["-static-libstdc++", "-static-libgcc"])):
        path = tmp / f"{kind}.so"
        proc = subprocess.run([gxx, "-shared", "-fPIC", "-O0", *flags, str(tmp / "lib.cpp"), "-o", str(path)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"g++ cannot build the {kind} library here: {proc.stderr.strip()[-300:]}")
        out[kind] = path
    return out


def _package(tmp_path, so_path=None, so_bytes=None, name="pkg"):
    """A .pt2-shaped archive (uncompressed members, as torch writes them) holding one wrapper .so."""
    path = tmp_path / f"{name}.pt2"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/archive_format", "pt2")
        member = f"{name}/data/aotinductor/model/abc.wrapper.so"
        if so_path:
            z.write(so_path, member)
        else:
            z.writestr(member, so_bytes)
    return path


# -- the ELF reader ----------------------------------------------------------------------------------------------
@linux_only
@pytest.mark.skipif(not (shutil.which("readelf") and shutil.which("nm")), reason="binutils (readelf, nm) not installed")
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_elf_reader_agrees_with_readelf_and_nm(libs, kind):
    path = str(libs[kind])
    info = read_elf_info(path)
    dyn = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    needed = tuple(line.split("[", 1)[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line)
    assert info.needed == needed
    nm = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in nm.splitlines() if line.strip()]
    names = {r[-1].split("@")[0] for r in rows}
    weak = {r[-1].split("@")[0] for r in rows if r[-2] in ("W", "V", "u", "w", "v")}
    assert info.strong | info.weak == names
    assert info.weak == weak and "match_device" in info.strong


def test_elf_reader_refuses_what_is_not_elf(tmp_path):
    (tmp_path / "x.so").write_bytes(b"#!/bin/sh\necho not a library\n")
    with pytest.raises(ElfError, match="not an ELF file"):
        read_elf_info(tmp_path / "x.so")
    (tmp_path / "t.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)  # a header cut short
    with pytest.raises(ElfError, match="truncated"):
        read_elf_info(tmp_path / "t.so")


# -- detection ---------------------------------------------------------------------------------------------------
@linux_only
def test_detects_a_library_that_carries_its_own_libstdcxx(libs):
    dynamic, static = al.inspect_library(libs["dynamic"]), al.inspect_library(libs["static"])
    assert dynamic.links_libstdcxx and dynamic.carries_libstdcxx is False and dynamic.carried_count == 0
    assert not static.links_libstdcxx and static.carries_libstdcxx is True
    assert static.carried_count > 100  # the runtime itself: locale, codecvt, ios, exceptions...
    assert any(w in s for s in static.carried for w in ("locale", "codecvt"))  # the state behind the crash


@linux_only
def test_package_inspection_reads_the_wrapper_inside_the_archive(libs, tmp_path):
    (check,) = al.inspect_package(_package(tmp_path, libs["static"]))
    assert check.library.endswith("abc.wrapper.so") and check.carries_libstdcxx is True
    (check,) = al.inspect_package(_package(tmp_path, libs["dynamic"], name="dyn"))
    assert check.carries_libstdcxx is False and "libstdc++.so.6" in check.needed
    (broken,) = al.inspect_package(_package(tmp_path, so_bytes=b"garbage: not a shared library at all", name="bad"))
    assert broken.carries_libstdcxx is None and "not an ELF" in broken.error
    empty = tmp_path / "empty.pt2"
    zipfile.ZipFile(empty, "w").close()
    assert "no .so inside" in al.inspect_package(empty)[0].error


# -- the decision ------------------------------------------------------------------------------------------------
CARRIES = al.WrapperCheck("/c/p.pt2", "w.so", ("libc.so.6",), ("_ZNSt6locale7classicEv",), None, 700)
LINKS = al.WrapperCheck("/c/p.pt2", "w.so", ("libstdc++.so.6", "libc.so.6"), (), None, 0)
UNKNOWN = al.WrapperCheck("/c/p.pt2", None, (), (), "no .so inside the archive")
NO_PRELOAD = al.ProcessState(False, (), ("/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",))
PRELOADED = al.ProcessState(True, ("/usr/lib/x86_64-linux-gnu/libstdc++.so.6",), NO_PRELOAD.mapped)


@pytest.mark.parametrize("check,state,ok,probe", [
    (LINKS, NO_PRELOAD, True, False),      # torch 2.13 here: nothing to do
    (LINKS, PRELOADED, True, False),
    (CARRIES, PRELOADED, True, False),     # the H200 image with the fix
    (CARRIES, NO_PRELOAD, False, False),   # the H200 image without it: refused, not loaded
    (UNKNOWN, NO_PRELOAD, False, True),    # cannot tell: load once in a child first
])
def test_decision(check, state, ok, probe):
    decision = al.decide(check, state, system_lib="/usr/lib/x86_64-linux-gnu/libstdc++.so.6")
    assert (decision.ok, decision.probe) == (ok, probe)


def test_refusal_names_the_cause_and_the_exact_fix(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    lib = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
    reason = al.decide(CARRIES, NO_PRELOAD, system_lib=lib).reason
    assert "w.so in /c/p.pt2" in reason and "carries its own copy of libstdc++" in reason
    assert "no libstdc++ in its DT_NEEDED" in reason and "700 C++ runtime symbols" in reason
    assert f"`LD_PRELOAD={lib} python3 ...`" in reason and "segfault" in reason
    monkeypatch.setenv("LD_PRELOAD", "/opt/libfoo.so")  # an existing preload is kept, after ours
    assert f"LD_PRELOAD={lib}:/opt/libfoo.so" in al.decide(CARRIES, NO_PRELOAD, system_lib=lib).reason
    monkeypatch.setattr(al, "system_libstdcxx", lambda: None)
    assert "apt-get install libstdc++6" in al.decide(CARRIES, NO_PRELOAD).reason


# -- this process and child processes ----------------------------------------------------------------------------
def _child_state(env) -> str:
    code = "import torch; from fluxperf.steps.export.loader import process_state; print(process_state().global_scope)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=True).stdout.strip()


@linux_only
@pytest.mark.skipif(SYSTEM_LIB is None, reason="no system libstdc++.so.6")
def test_process_state_sees_the_preload():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert _child_state(env) == "False"  # torch loads libstdc++ privately: not in the global scope
    preloaded = al.preload_env(env)
    assert preloaded["LD_PRELOAD"] == SYSTEM_LIB
    assert _child_state(preloaded) == "True"
    assert al.preload_env(preloaded) == preloaded  # already preloaded: unchanged


_CALL = ("import ctypes, sys, torch; lib = ctypes.CDLL(sys.argv[1]); "
         "print('match', lib.match_device(b'cuda:0'), flush=True)")


@linux_only
@pytest.mark.slow
@pytest.mark.skipif(SYSTEM_LIB is None, reason="no system libstdc++.so.6")
def test_the_decision_predicts_the_crash(libs):
    """The static library in a process that imported torch: refused without the preload (and it really dies there),
    allowed with it (and it really works). The dynamic one: allowed, works."""
    bare = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    with_preload = al.preload_env(bare)
    static = al.inspect_library(libs["static"])
    assert not al.decide(static, al.ProcessState(False, (), ()), SYSTEM_LIB).ok
    assert al.decide(static, al.ProcessState(True, (SYSTEM_LIB,), ()), SYSTEM_LIB).ok
    ok = subprocess.run([sys.executable, "-c", _CALL, str(libs["static"])], env=with_preload, capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0 and "match 1" in ok.stdout, ok.stderr[-2000:]
    dynamic = subprocess.run([sys.executable, "-c", _CALL, str(libs["dynamic"])], env=bare, capture_output=True,
                             text=True, timeout=300)
    assert dynamic.returncode == 0 and "match 1" in dynamic.stdout, dynamic.stderr[-2000:]
    crash = subprocess.run([sys.executable, "-c", _CALL, str(libs["static"])], env=bare, capture_output=True,
                           text=True, timeout=300)
    if crash.returncode == 0:
        pytest.skip("this toolchain's static libstdc++ happens not to conflict with torch's (the H200 image's does)")
    assert crash.returncode < 0 and -crash.returncode in (signal.SIGSEGV, signal.SIGABRT), crash.returncode


# -- ensure_loadable / load ----------------------------------------------------------------------------------------
@linux_only
def test_ensure_loadable_refuses_a_carrying_package_without_the_preload(libs, tmp_path, monkeypatch):
    package = _package(tmp_path, libs["static"])
    monkeypatch.setattr(al, "process_state", lambda: NO_PRELOAD)
    with pytest.raises(al.LibstdcxxPreloadError, match=r"carries its own copy of libstdc\+\+.*LD_PRELOAD="):
        al.ensure_loadable(package)
    with pytest.raises(al.LibstdcxxPreloadError):
        al.load(package)  # the load path: refused before torch ever opens the file
    monkeypatch.setattr(al, "process_state", lambda: PRELOADED)
    al.ensure_loadable(package)  # with the preload: allowed
    al.ensure_loadable(_package(tmp_path, libs["dynamic"], name="dyn"))


@linux_only
def test_uninspectable_package_is_probed_in_a_child(tmp_path, monkeypatch):
    package = _package(tmp_path, so_bytes=b"garbage: not a shared library at all", name="bad")
    monkeypatch.setattr(al, "_PROBE_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(al.LibstdcxxPreloadError, match=r"cannot inspect.*died of signal 11.*LD_PRELOAD="):
        al.ensure_loadable(package)
    monkeypatch.setattr(al, "_PROBE_CODE", "import sys; sys.exit('RuntimeError: not a package')")
    al.ensure_loadable(package)  # the child failed cleanly: loading here raises a Python error, not a crash


def test_cli_prints_the_system_library_and_checks_a_package(libs, tmp_path, capsys):
    assert al.main(["system-lib"]) == (0 if SYSTEM_LIB else 1)
    assert capsys.readouterr().out.strip() == (SYSTEM_LIB or "")
    assert al.main(["check", str(_package(tmp_path, libs["dynamic"]))]) == 0
    assert "ok: " in capsys.readouterr().out
    assert al.main(["nonsense"]) == 2
