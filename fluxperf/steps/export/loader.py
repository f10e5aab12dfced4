"""Load AOTInductor packages only where that cannot crash the process; otherwise say why and how to fix it.

The fault (../shared/DEVICE.md, issue 14): on some torch builds (measured: torch 2.11.0+cu130) the package's
`wrapper.so` is linked with its own copy of libstdc++ (no libstdc++ DT_NEEDED entry; the C++ runtime's own,
non-template symbols defined inside). Loaded into a Python process whose libstdc++ is not in the global symbol
scope (the normal case: torch loads it privately), the wrapper binds to its own copy, mixes it with the
process's locale state and segfaults in `std::regex` (torch::aot_inductor::parse_device_str) — every load, CPU
packages included. Starting Python with the system libstdc++ preloaded puts it in the global scope; the
wrapper's (interposable) runtime symbols then bind to it and loading works. LD_PRELOAD must be set before the
interpreter starts, so the fix cannot be applied from inside a running process.

So before every load, `ensure_loadable(path)`:
  1. reads the ELF dynamic section and symbols of every `.so` in the package (fluxperf.steps.export.elf; nothing loaded);
  2. asks whether libstdc++ is in this process's global scope (dlsym through dlopen(NULL); LD_PRELOAD and
     /proc/self/maps are reported alongside);
  3. refuses with `LibstdcxxPreloadError` (cause and the exact `LD_PRELOAD=...` line) when a wrapper carries its
     own libstdc++ and the process has none in the global scope; if a package cannot be inspected, it loads it
     once in a child process first and refuses if that child dies of a signal.
`load(path, **kwargs)` is `torch._inductor.aoti_load_package` behind that check: use it for every load.

Example:
    >>> decide(WrapperCheck("p.pt2", "w.so", ("libc.so.6",), ("__gxx_personality_v0",), None),
    ...        ProcessState(False, (), ()), system_lib="/usr/lib/x86_64-linux-gnu/libstdc++.so.6").ok
    False
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from fluxperf.errors import FluxperfError
from fluxperf.steps.export.elf import ElfError, read_elf_info

# Strong definitions of these mean "the C++ runtime itself is inside" (std::, the GNU extensions, the C++ ABI
# runtime). Template instantiations are WEAK/UNIQUE in every C++ library and are not counted (fluxperf.steps.export.elf).
_RUNTIME_SYMBOL = re.compile(r"^(_ZN?K?S[tsiodab]|_ZT[ISV]S[tsiodab]|_ZN9__gnu_cxx|_ZN10__cxxabiv1|__cxa_|__gxx_)")
_PROBE_SYMBOL = "_ZNSt6locale7classicEv"  # std::locale::classic(): defined by every libstdc++
PROBE_TIMEOUT_S = 300
_PROBE_CODE = "import sys, torch._inductor; torch._inductor.aoti_load_package(sys.argv[1])"


class LibstdcxxPreloadError(FluxperfError, RuntimeError):
    """Loading this AOTInductor package would crash the process: it needs the system libstdc++ preloaded."""


@dataclass(frozen=True)
class WrapperCheck:
    """What one native library of a package says about its C++ runtime.

    package: the .pt2 path; library: the member name of the .so inside it (None: nothing found to inspect).
    needed: its DT_NEEDED entries. carried: libstdc++ runtime symbols it defines itself (strong; a sample of at
    most 5, for the message). error: why it could not be inspected (then the other fields are empty).
    """

    package: str
    library: str | None
    needed: tuple[str, ...]
    carried: tuple[str, ...]
    error: str | None = None
    carried_count: int = field(default=-1, compare=False)

    @property
    def links_libstdcxx(self) -> bool:
        return any(n.startswith("libstdc++") for n in self.needed)

    @property
    def carries_libstdcxx(self) -> bool | None:
        """True: it has its own copy of the runtime; None: unknown (see error)."""
        return None if self.error else bool(self.carried)


@dataclass(frozen=True)
class ProcessState:
    """This process's libstdc++: in the global symbol scope? which LD_PRELOAD entries and mapped copies?"""

    global_scope: bool
    preloaded: tuple[str, ...]
    mapped: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str
    probe: bool = False  # inspection failed: load once in a child process to find out


# -- facts -----------------------------------------------------------------------------------------------
def inspect_library(source, package: str = "", library: str | None = None) -> WrapperCheck:
    """WrapperCheck of one shared library (a path or a seekable binary file object)."""
    name = library or str(source)
    try:
        info = read_elf_info(source)
    except (ElfError, OSError) as exc:
        return WrapperCheck(package or name, name, (), (), f"{type(exc).__name__}: {exc}")
    # locale/codecvt/regex first: the state behind the crash, and what a reader of the message recognises
    carried = sorted((s for s in info.strong if _RUNTIME_SYMBOL.match(s)),
                     key=lambda s: (not any(w in s for w in ("locale", "codecvt", "regex")), s))
    return WrapperCheck(package or name, name, info.needed, tuple(carried[:5]), None, len(carried))


def inspect_package(path: str | os.PathLike) -> list[WrapperCheck]:
    """One WrapperCheck per `.so` inside the .pt2 archive (a package without any gives one with `error` set)."""
    path = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".so")]
            checks = []
            for member in members:
                with archive.open(member) as f:  # stored uncompressed: seeks are cheap
                    checks.append(inspect_library(f, path, member.filename))
    except (zipfile.BadZipFile, OSError) as exc:
        return [WrapperCheck(path, None, (), (), f"cannot read the archive: {type(exc).__name__}: {exc}")]
    return checks or [WrapperCheck(path, None, (), (), "no .so inside the archive (unknown package layout)")]


def process_state() -> ProcessState:
    """Is a libstdc++ in this process's global symbol scope (what LD_PRELOAD provides)? Never loads anything."""
    preloaded = tuple(p for p in re.split(r"[: ]", os.environ.get("LD_PRELOAD", "")) if "libstdc++" in p)
    mapped: set[str] = set()
    try:
        with open("/proc/self/maps") as f:
            mapped = {line.split()[-1] for line in f if "libstdc++" in line}
    except OSError:
        pass
    try:
        global_scope = hasattr(ctypes.CDLL(None), _PROBE_SYMBOL)  # dlopen(NULL): lookups search the global scope
    except OSError:
        global_scope = False
    return ProcessState(global_scope, preloaded, tuple(sorted(mapped)))


def system_libstdcxx() -> str | None:
    """Path of the system's libstdc++.so.6 (multiarch, lib64 or lib directories), or None."""
    machine = platform.machine()
    for directory in (f"/usr/lib/{machine}-linux-gnu", f"/lib/{machine}-linux-gnu", "/usr/lib64", "/lib64",
                      "/usr/lib"):
        candidate = Path(directory) / "libstdc++.so.6"
        if candidate.exists():
            return str(candidate)
    return None


def fix_line(system_lib: str | None = None) -> str:
    """The exact fix: `LD_PRELOAD=<system libstdc++>[:<existing LD_PRELOAD>] <your command>`."""
    lib = system_lib or system_libstdcxx() or f"/usr/lib/{platform.machine()}-linux-gnu/libstdc++.so.6"
    existing = os.environ.get("LD_PRELOAD", "")
    return f"LD_PRELOAD={lib}{':' + existing if existing else ''}"


def preload_env(env: dict | None = None) -> dict:
    """A copy of `env` (default os.environ) whose LD_PRELOAD starts with the system libstdc++, for child processes
    that may load packages (diag stages, tests).

    Unchanged when a libstdc++ is already preloaded, when there is no system one, or when this process runs
    another libstdc++ than the system's (e.g. a conda torch that may need a newer one: preloading an older
    library could break `import torch` in the child).
    """
    env = dict(os.environ if env is None else env)
    lib, current = system_libstdcxx(), env.get("LD_PRELOAD", "")
    if not lib or not sys.platform.startswith("linux") or "libstdc++" in current:
        return env
    mapped = {os.path.realpath(m) for m in process_state().mapped}
    if mapped and os.path.realpath(lib) not in mapped:
        return env
    env["LD_PRELOAD"] = lib + (":" + current if current else "")
    return env


# -- decision --------------------------------------------------------------------------------------------
def decide(check: WrapperCheck, state: ProcessState, system_lib: str | None = None) -> Decision:
    """May this library be loaded into this process? (pure: facts in, verdict and reason out)"""
    where = check.package if check.library in (None, check.package) else f"{check.library} in {check.package}"
    if check.carries_libstdcxx is None:
        return Decision(False, f"cannot inspect {where}: {check.error}", probe=True)
    if not check.carries_libstdcxx:
        return Decision(True, f"{where} uses the process's libstdc++ (needs {list(check.needed)})")
    if state.global_scope:
        return Decision(True, f"{where} carries its own libstdc++, but one is in the global scope "
                              f"(LD_PRELOAD={':'.join(state.preloaded) or 'unset'}): its symbols bind to that one")
    return Decision(False, _refusal(where, check, state, system_lib))


def _refusal(where: str, check: WrapperCheck, state: ProcessState, system_lib: str | None) -> str:
    lib = system_lib or system_libstdcxx()
    install = "" if lib else " (no system libstdc++.so.6 was found: install it first, e.g. apt-get install libstdc++6)"
    return (f"refusing to load AOTInductor package {where}: it carries its own copy of libstdc++ "
            f"({'' if check.links_libstdcxx else 'no libstdc++ in its DT_NEEDED entries, '}{check.carried_count} "
            f"C++ runtime symbols defined inside, e.g. {list(check.carried[:3])}) and this process has no libstdc++ "
            f"in its global symbol scope (LD_PRELOAD={os.environ.get('LD_PRELOAD', '') or 'unset'}), so loading it "
            "would segfault in std::regex/locale code (torch::aot_inductor::parse_device_str). Fix: start Python "
            f"with the system libstdc++ preloaded: `{fix_line(lib)} python3 ...` (or `export {fix_line(lib)}` in the "
            f"shell that starts Python, or `source scripts/tiers/device-env.sh`){install}. It cannot be set from inside "
            "a running process.")


# -- loading ---------------------------------------------------------------------------------------------
_CHECKED: dict[tuple, None] = {}


def ensure_loadable(path: str | os.PathLike) -> None:
    """Raise LibstdcxxPreloadError if loading the package at `path` would crash this process (see module doc).

    Cheap after the first call for the same file (cached by path, size and mtime). Not Linux: nothing to check.
    """
    if not sys.platform.startswith("linux"):
        return
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:
        return
    state, lib = process_state(), system_libstdcxx()
    for check in inspect_package(path):
        decision = decide(check, state, lib)
        if decision.probe:
            probe_load(path, decision.reason)
        elif not decision.ok:
            raise LibstdcxxPreloadError(decision.reason)
    _CHECKED[key] = None


def probe_load(path: str | os.PathLike, why: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Load the package once in a child process (same environment); raise if the child dies of a signal."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_CODE, str(path)], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise LibstdcxxPreloadError(f"{why}; loading it in a child process did not finish in {timeout_s:.0f} s. "
                                    f"Fix: try `{fix_line()} python3 ...`, or rebuild the package.") from exc
    if proc.returncode < 0:
        raise LibstdcxxPreloadError(
            f"{why}; loading it in a child process died of signal {-proc.returncode}, so loading it here would crash "
            f"this process. Fix: start Python with `{fix_line()} python3 ...` (see fluxperf.steps.export.loader), or rebuild "
            f"the package. Child output: {(proc.stdout + proc.stderr)[-400:]!r}")


def load(path: str | os.PathLike, **kwargs):
    """torch._inductor.aoti_load_package(path, **kwargs) after ensure_loadable(path).

    Raises:
        LibstdcxxPreloadError: loading would segfault this process (cause and the LD_PRELOAD fix are named).
    """
    import torch._inductor

    ensure_loadable(path)
    return torch._inductor.aoti_load_package(str(path), **kwargs)


def main(argv: list[str] | None = None) -> int:
    """`python -m fluxperf.steps.export.loader system-lib` prints the system libstdc++ path (exit 1 if none);
    `... check PACKAGE.pt2` prints each library's verdict (exit 1 if loading here would be refused)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["system-lib"]:
        lib = system_libstdcxx()
        print(lib or "")
        return 0 if lib else 1
    if len(argv) == 2 and argv[0] == "check":
        state, lib, ok = process_state(), system_libstdcxx(), True
        for check in inspect_package(argv[1]):
            decision = decide(check, state, lib)
            ok &= decision.ok
            print(("ok: " if decision.ok else "REFUSED: ") + decision.reason)
        return 0 if ok else 1
    print("usage: python -m fluxperf.steps.export.loader system-lib | check PACKAGE.pt2", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
