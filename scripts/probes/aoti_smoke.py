"""Smallest AOTInductor round trip (export -> compile -> package -> load -> run), to tell an environment problem
from a fluxperf one.

Before loading, the package's wrapper.so is inspected (fluxperf.steps.export.loader): if it carries its own libstdc++ and
the system one is not preloaded, the load is refused with the LD_PRELOAD fix instead of crashing. `--raw` loads
with torch._inductor.aoti_load_package directly (to reproduce the crash, e.g. under cuda-gdb).

Usage: python3 scripts/probes/aoti_smoke.py [--device cuda|cpu] [--raw] [--import-torchao] [--import-diffusers]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    from fluxperf.steps.export import loader as aoti_loader

    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--raw", action="store_true", help="load without the libstdc++ check (may segfault)")
    p.add_argument("--import-torchao", action="store_true")
    p.add_argument("--import-diffusers", action="store_true")
    args = p.parse_args()
    if args.import_torchao:
        import torchao  # noqa: F401
    if args.import_diffusers:
        import diffusers  # noqa: F401
    t0 = time.perf_counter()
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
    model = model.to(args.device).eval()
    x = torch.randn(8, 256, device=args.device)
    with torch.inference_mode():
        ref = model(x)
    ep = torch.export.export(model, (x,))
    print(f"export ok {time.perf_counter() - t0:.1f}s", flush=True)
    path = os.path.join(tempfile.mkdtemp(), "smoke.pt2")
    torch._inductor.aoti_compile_and_package(ep, package_path=path)
    print(f"compile+package ok {time.perf_counter() - t0:.1f}s ({os.path.getsize(path)} bytes)", flush=True)
    state = aoti_loader.process_state()
    for check in aoti_loader.inspect_package(path):
        verdict = aoti_loader.decide(check, state)
        print(f"wrapper {check.library}: needed={list(check.needed)} carries_libstdcxx={check.carries_libstdcxx} "
              f"({check.carried_count} runtime symbols) -> {'ok' if verdict.ok else 'REFUSED'}", flush=True)
    if args.raw:
        runner = torch._inductor.aoti_load_package(path)
    else:
        try:
            runner = aoti_loader.load(path)
        except aoti_loader.LibstdcxxPreloadError as exc:
            print(f"load refused: {exc}", flush=True)
            return 3
    print(f"load ok {time.perf_counter() - t0:.1f}s", flush=True)
    out = runner(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    err = (out - ref).abs().max().item()
    print(f"run ok {time.perf_counter() - t0:.1f}s max|diff|={err:.2e}", flush=True)
    return 0 if err < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
