"""Importing fluxperf imports no heavy optional dependency and never touches CUDA."""

import json
import subprocess
import sys

FORBIDDEN = ["torchao", "cache_dit", "flash_attn_interface", "fa3_fwd_interface", "aiter"]
_PROBE = """
import json, sys
import {modules}
import torch
print(json.dumps({{"loaded": sorted(m for m in sys.modules), "cuda_initialized": torch.cuda.is_initialized()}}))
"""


def _loaded_after(modules: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(modules=modules)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_fluxperf_loads_no_torch_and_no_optional_stack():
    code = "import fluxperf, sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    for name in ["torch", "diffusers", "transformers", *FORBIDDEN]:
        assert name not in loaded, f"import fluxperf imported {name}"


def test_library_modules_import_no_optional_stack_nor_cuda():
    modules = ("fluxperf, fluxperf.recipe, fluxperf.ladder, fluxperf.apply, fluxperf.model.build, fluxperf.model.shapes, "
               "fluxperf.steps.compile, fluxperf.steps.quantize, fluxperf.env, fluxperf.measure.metrics, fluxperf.measure.ladder_run, "
               "fluxperf.cli")
    result = _loaded_after(modules)
    bad = [m for m in result["loaded"] if m.split(".")[0] in FORBIDDEN or m.split(".")[0] == "diffusers"]
    assert bad == []
    assert result["cuda_initialized"] is False


def test_optional_probe_does_not_import():
    code = ("import sys, json; from fluxperf.optional import probe; "
            "r = {n: probe(n) for n in ['torchao', 'cache_dit', 'fa3', 'aiter']}; "
            "print(json.dumps([r, sorted(m for m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    _, loaded = json.loads(out.stdout)
    assert not [m for m in loaded if m.split(".")[0] in FORBIDDEN]
