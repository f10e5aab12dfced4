"""The plugin is loaded by every pytest run: importing fluxperf.bench must stay cheap (no torch, CUDA, scipy, pandas)."""

import json
import subprocess
import sys

MODULES = ["fluxperf.bench", "fluxperf.bench.pytest_plugin", "fluxperf.bench.stats", "fluxperf.bench.monitor",
           "fluxperf.bench.calibration", "fluxperf.bench.flops", "fluxperf.bench.baseline", "fluxperf.bench.compare",
           "fluxperf.bench.report", "fluxperf.bench.slowdown", "fluxperf.bench.harness", "fluxperf.cli.baseline"]


def test_bench_modules_import_nothing_heavy():
    code = f"import json, sys\nfor m in {MODULES!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    heavy = {"torch", "scipy", "pandas", "matplotlib", "pynvml", "diffusers", "torchao"}
    assert heavy & loaded == set()
