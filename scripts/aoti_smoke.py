"""Smallest AOTInductor round trip (export -> compile -> package -> load -> run), to tell an environment problem
from a fluxperf one. Usage: python3 scripts/aoti_smoke.py [--import-torchao] [--import-diffusers]"""

import argparse
import os
import sys
import tempfile
import time

import torch


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--import-torchao", action="store_true")
    p.add_argument("--import-diffusers", action="store_true")
    args = p.parse_args()
    if args.import_torchao:
        import torchao  # noqa: F401
    if args.import_diffusers:
        import diffusers  # noqa: F401
    t0 = time.perf_counter()
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).cuda().eval()
    x = torch.randn(8, 256, device="cuda")
    with torch.inference_mode():
        ref = model(x)
    ep = torch.export.export(model, (x,))
    print(f"export ok {time.perf_counter() - t0:.1f}s", flush=True)
    path = os.path.join(tempfile.mkdtemp(), "smoke.pt2")
    torch._inductor.aoti_compile_and_package(ep, package_path=path)
    print(f"compile+package ok {time.perf_counter() - t0:.1f}s ({os.path.getsize(path)} bytes)", flush=True)
    runner = torch._inductor.aoti_load_package(path)
    print(f"load ok {time.perf_counter() - t0:.1f}s", flush=True)
    out = runner(x)
    err = (out - ref).abs().max().item()
    print(f"run ok {time.perf_counter() - t0:.1f}s max|diff|={err:.2e}", flush=True)
    return 0 if err < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
