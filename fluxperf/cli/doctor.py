"""`fluxperf doctor`: a quick self-check of the environment the optimization stack runs in.

One line per item: torch/CUDA, the GPU identity, the FA3 build, torchao, cache-dit, NVML, and the AOTInductor
libstdc++ check: a tiny CPU package is built (in a child process: about 20 s, cached by Inductor afterwards),
its `wrapper.so` inspected without loading it, and the verdict combined with this process's libstdc++ state
(fluxperf.steps.export.loader): would a package need the system libstdc++ preloaded, and is it? `--json` prints the
same facts as JSON. Exit status 1 only for a real problem (torch unusable, a tiny package cannot be built, or
packages would crash this environment); a missing optional package is reported, not a failure.

    fluxperf doctor              fluxperf doctor --json              fluxperf doctor --no-aoti
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK, MISSING, INFO, FAIL = "ok", "missing", "info", "FAIL"
AOTI_BUILD_TIMEOUT_S = 600
# Builds a tiny CPU package (no load) and prints its path: run in a child so a broken toolchain cannot hurt us.
_BUILD_TINY = """
import sys, torch
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8)).eval()
program = torch.export.export(model, (torch.randn(2, 8),))
print(torch._inductor.aoti_compile_and_package(program, package_path=sys.argv[1]))
"""


@dataclass
class Item:
    """One line of the report: item name, status (ok / missing / info / FAIL), a one-line detail, facts."""

    item: str
    status: str
    detail: str
    facts: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status:8s}{self.item:11s}{self.detail}"


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check the environment (torch/CUDA, GPU, FA3, torchao, cache-dit, NVML, "
                                             "AOTInductor libstdc++)",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-aoti", action="store_true", help="skip building the tiny AOTInductor package (about 20 s)")
    p.set_defaults(func=run)


def run(args) -> int:
    items = collect(aoti=not args.no_aoti)
    if args.json:
        print(json.dumps([asdict(i) for i in items], indent=1, default=str))
    else:
        for item in items:
            print(item.line())
    return 1 if any(i.status == FAIL for i in items) else 0


def collect(aoti: bool = True) -> list[Item]:
    """Every check, in report order (each catches only the errors its probe can raise)."""
    items = [torch_item()]
    if items[0].status == FAIL:
        return items
    items += [gpu_item(), fa3_item(), package_item("torchao", "torchao"), package_item("cache-dit", "cache_dit"),
              nvml_item()]
    items.append(aoti_item() if aoti else Item("aoti", INFO, "skipped (--no-aoti)"))
    return items


def torch_item() -> Item:
    try:
        import torch
    except ImportError as exc:
        return Item("torch", FAIL, f"cannot import torch ({exc}). Fix: pip install 'torch>=2.8'")
    cuda = torch.cuda.is_available()
    facts = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": cuda,
             "devices": torch.cuda.device_count() if cuda else 0}
    where = f"CUDA {torch.version.cuda}, {facts['devices']} device(s)" if cuda else \
        f"no CUDA device ({'CPU build' if torch.version.cuda is None else f'CUDA {torch.version.cuda} build'})"
    return Item("torch", OK, f"{torch.__version__}, {where}", facts)


def gpu_item() -> Item:
    from fluxperf import env

    identity_fn = getattr(env, "gpu_identity", None)  # UUID-based identity where env provides it
    if identity_fn is not None:
        identity = identity_fn()
        facts = identity.to_dict() if identity is not None else None
    else:
        facts = env.gpu_info() if env.has_cuda() else None
    if not facts:
        return Item("gpu", INFO, "none (CPU only): the GPU tiers and the export rung need a CUDA GPU")
    text = ", ".join(f"{k} {facts[k]}" for k in ("uuid", "capability", "slug") if facts.get(k))
    return Item("gpu", OK, f"{facts.get('name')} ({text})", facts)


def fa3_item() -> Item:
    from fluxperf.env import fa3_build

    build = fa3_build()
    if build is None:
        return Item("fa3", MISSING, "no FlashAttention-3 build (the fa3/fa3_fp8 attention backends are unavailable; "
                                    "install fa3-fwd on a Hopper GPU)")
    return Item("fa3", OK, build, {"build": build})


def package_item(dist: str, key: str) -> Item:
    """An optional package: `dist` its distribution name, `key` its fluxperf.optional.PACKAGES key."""
    from fluxperf.env import dist_version
    from fluxperf.optional import find_module

    version, found = dist_version(dist), find_module(key)
    if not found:
        return Item(dist, MISSING, f"not installed (pip install 'fluxperf[{dist}]')", {"version": version})
    return Item(dist, OK, f"{version or 'version unknown'} (module {found})", {"version": version})


def nvml_item() -> Item:
    from fluxperf.optional import find_module

    if not find_module("pynvml"):
        return Item("nvml", MISSING, "nvidia-ml-py not installed: no clock/temperature/throttle monitoring "
                                     "(pip install 'fluxperf[nvml]')")
    import pynvml

    try:
        pynvml.nvmlInit()
        count, driver = pynvml.nvmlDeviceGetCount(), pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError as exc:
        return Item("nvml", INFO, f"nvidia-ml-py installed, NVML unavailable ({exc}): no NVIDIA driver here")
    driver = driver.decode() if isinstance(driver, bytes) else driver
    return Item("nvml", OK, f"driver {driver}, {count} device(s)", {"driver": driver, "devices": count})


def aoti_item(timeout_s: float = AOTI_BUILD_TIMEOUT_S) -> Item:
    """Build a tiny CPU package in a child, inspect its wrapper, combine with this process's libstdc++ state."""
    from fluxperf.steps.export import loader as al

    state, lib = al.process_state(), al.system_libstdcxx()
    facts = {"process": asdict(state), "system_libstdcxx": lib}
    with tempfile.TemporaryDirectory(prefix="fluxperf-doctor-") as tmp:
        package = Path(tmp) / "tiny.pt2"
        try:
            proc = subprocess.run([sys.executable, "-c", _BUILD_TINY, str(package)], capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return Item("aoti", FAIL, f"building a tiny CPU package took over {timeout_s:.0f} s", facts)
        if proc.returncode != 0 or not package.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            return Item("aoti", FAIL, f"cannot build a tiny CPU package: {tail[0][:300]}. Fix: a C++ compiler "
                                      "(g++) is needed for AOTInductor", facts)
        checks = al.inspect_package(package)
    facts["wrappers"] = [asdict(c) | {"carries_libstdcxx": c.carries_libstdcxx} for c in checks]
    decisions = [al.decide(c, state, lib) for c in checks]
    carries = any(c.carries_libstdcxx for c in checks)
    preload = f"LD_PRELOAD={':'.join(state.preloaded) or 'unset'}"
    if any(d.probe for d in decisions):
        return Item("aoti", FAIL, f"cannot inspect the package's wrapper: {decisions[0].reason}", facts)
    if not carries:
        return Item("aoti", OK, f"packages use the process's libstdc++: no preload needed ({preload})", facts)
    if all(d.ok for d in decisions):
        return Item("aoti", OK, f"packages carry their own libstdc++; the preload is set ({preload})", facts)
    return Item("aoti", FAIL, f"packages carry their own libstdc++ and the preload is missing: loading one would "
                              f"segfault. Fix: {al.fix_line(lib)} python3 ...  (or source scripts/tiers/device-env.sh)",
                facts)
