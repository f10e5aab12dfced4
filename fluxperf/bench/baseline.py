"""Per-hardware baselines, read side: where they live, which GPU this is, loading and validating them.

baselines/<gpu-slug>/0001_baseline.json is a pytest-benchmark run JSON (machine_info, commit_info, benchmarks with
per-round samples in stats.data), so `--benchmark-compare` and `--benchmark-compare-fail` read it as any stored
run, plus a "fluxperf" section: format, GPU slug, per-benchmark thresholds derived from measured noise, the kernel
tables that belong to it (`kernel_tables`: benchmark -> file under kernels/) and provenance. It changes only through
`fluxperf baseline update|remove` (fluxperf.bench.baseline_update). Every field is validated on load
(fluxperf.bench.validate): a corrupt, relabelled or invalid file raises BaselineError (exit status 12).

Example:
    >>> baseline_path("nvidia-h100-80gb-hbm3", "baselines").as_posix()
    'baselines/nvidia-h100-80gb-hbm3/0001_baseline.json'
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

from fluxperf.bench import validate
from fluxperf.errors import BaselineError

FORMAT = validate.FORMAT
BASELINE_NAME = "0001_baseline.json"  # pytest-benchmark's compare glob is NNNN_*.json
ROOT_ENV = "FLUXPERF_BASELINES"
CREATE_COMMAND = "scripts/tiers/perf-tier.sh all --baseline"


def default_root() -> Path:
    """$FLUXPERF_BASELINES, else ./baselines."""
    return Path(os.environ.get(ROOT_ENV) or "baselines")


def baseline_path(slug: str, root: str | Path | None = None) -> Path:
    return Path(root if root is not None else default_root()) / slug / BASELINE_NAME


def create_command(group: str | None = None) -> str:
    """The command that records a baseline for this GPU (one group or all)."""
    return f"scripts/tiers/perf-tier.sh {group or 'all'} --baseline"


def detect_gpu():
    """The GPU this process measures (fluxperf.env.gpu_identity: CUDA device, NVML by UUID), or None."""
    from fluxperf.env import gpu_identity

    return gpu_identity()


def machine_fingerprint(identity=None) -> dict:
    """GPU (name, UUID, capability, driver, CUDA, slug) and software versions, for machine_info["fluxperf"]."""
    from fluxperf.env import GPU_NAME_ENV, driver_version, gpu_info, versions

    identity = identity if identity is not None else detect_gpu()
    if identity is None:
        gpu = None
    elif identity.source == GPU_NAME_ENV:
        gpu = {"name": identity.name, "slug": identity.slug, "capability": identity.capability,
               "driver": driver_version(), "source": identity.source}
    else:
        gpu = {**(gpu_info(identity.cuda_index) or identity.to_dict()), "source": identity.source}
    return {"gpu": gpu, "slug": identity.slug if identity else "cpu", "versions": versions(), "host": platform.node()}


def run_slug(run: dict, source: str = "run") -> str:
    """The GPU slug a pytest-benchmark run JSON was recorded on (from our machine-info hook)."""
    try:
        return run["machine_info"]["fluxperf"]["slug"]
    except (KeyError, TypeError):
        raise BaselineError(
            f"{source}: machine_info.fluxperf.slug is missing, so the GPU it ran on is unknown. Fix: record runs "
            "with the fluxperf pytest plugin active (root conftest) and --benchmark-json."
        ) from None


def read_json(path: str | Path, what: str, fix: str) -> dict:
    """Parse a JSON file; unreadable or invalid JSON raises BaselineError naming the file and the fix."""
    try:
        return json.loads(Path(path).read_text(encoding="utf8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"{what} {path} is unreadable or not JSON ({exc}). Fix: {fix}.") from exc


def load_baseline(path: str | Path, *, expected_slug: str | None = None) -> dict:
    """Read and validate a baseline file, field by field.

    Raises:
        BaselineError: unreadable or corrupt JSON, a field of the wrong type or range, a relabelled file, an
            invalid record (throttled, drifting, injected slowdown), or recorded on a GPU other than expected_slug.
    """
    path = Path(path)
    fix = f"restore it from git (git checkout -- {path}) or recreate it: {CREATE_COMMAND}"
    data = validate.check_baseline(read_json(path, "baseline", fix), path)
    slug = data["fluxperf"]["gpu_slug"]
    if expected_slug is not None and slug != expected_slug:
        raise BaselineError(
            f"baseline {path} was recorded on GPU {slug!r} but this run is on {expected_slug!r}: timings from "
            f"different hardware are not comparable. Fix: move it to baselines/{slug}/, or create one for this GPU: "
            f"{CREATE_COMMAND}")
    return data


def load_run(path: str | Path) -> dict:
    """Read and validate a --benchmark-json run file (older formats without stats.data or fullname are refused)."""
    fix = "pass a file written by `pytest -m gpu perf --benchmark-json=FILE` with the fluxperf plugin active"
    return validate.check_run(read_json(path, "run file", fix), Path(path).name)


def benchmarks_by_name(data: dict) -> dict[str, dict]:
    return {b["fullname"]: b for b in data.get("benchmarks", [])}


def kernel_table_file(directory: str | Path, benchmark: str) -> Path:
    """The stored kernel table of `benchmark` under baselines/<slug>/ (or its kernels/ folder).

    The baseline's `fluxperf.kernel_tables` names the file written with it (content-addressed, so the JSON and
    its tables change together); older baselines used kernels/<safe_name>.csv.
    """
    directory = Path(directory)
    root, kernels = ((directory, directory / "kernels") if (directory / BASELINE_NAME).exists()
                     else (directory.parent, directory))
    path = root / BASELINE_NAME
    if path.exists():
        refs = (read_json(path, "baseline", "restore it from git").get("fluxperf") or {}).get("kernel_tables") or {}
        if benchmark in refs:
            return root / refs[benchmark]
    return kernels / f"{safe_name(benchmark)}.csv"


def safe_name(fullname: str) -> str:
    """'perf/test_ladder.py::test_transformer_step[bf16]' -> 'test_ladder.py-test_transformer_step-bf16'."""
    tail = fullname.split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tail).strip("-")
