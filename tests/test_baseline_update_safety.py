"""Nothing written is lost or half-written: concurrent `fluxperf baseline update`, SIGKILL in the middle of one,
stale temp files, and file modes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fluxperf.bench import baseline_update as bu
from fluxperf.bench.baseline import BASELINE_NAME, kernel_table_file, load_baseline
from fluxperf.bench.fakes import fake_run, noisy
from fluxperf.io import atomic_write_text, stale_temp_files

SLUG = "nvidia-h100-80gb-hbm3"
TABLE = [{"name": "sm90_gemm", "count": 114.0, "cuda_time_us": 90000.0}]


def _run_file(tmp: Path, name: str, seed: int, table=None) -> Path:
    path = tmp / f"{name.replace('/', '_').replace(':', '_')}-{seed}.json"
    extra = {"kernel_table": table} if table else None
    path.write_text(json.dumps(fake_run({name: noisy(0.1 + seed * 1e-3, 12, seed=seed)}, extra_info=extra)))
    return path


def _update(args):
    run, root = args
    return [str(p) for p in bu.update_baseline([run], root=root, command="concurrent")]


def test_concurrent_updates_lose_nothing(tmp_path):
    root = tmp_path / "baselines"
    for trial in range(3):
        runs = [_run_file(tmp_path, f"perf/t.py::test_{trial}_{i}", i, TABLE) for i in range(4)]
        with ProcessPoolExecutor(4) as pool:
            list(pool.map(_update, [(r, root) for r in runs]))
    data = load_baseline(root / SLUG / BASELINE_NAME)
    names = {b["fullname"] for b in data["benchmarks"]}
    assert names == {f"perf/t.py::test_{t}_{i}" for t in range(3) for i in range(4)}
    assert all(kernel_table_file(root / SLUG, n).exists() for n in names)  # every table referenced and present


KILLER = """
import os, signal, sys
import fluxperf.io as io
real = os.replace
def replace(src, dst):
    if str(dst).endswith("0001_baseline.json"):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 after the new kernel table, before the JSON commit point
    return real(src, dst)
io.os.replace = replace
from fluxperf.bench.baseline_update import update_baseline
update_baseline([sys.argv[1]], root=sys.argv[2], command="killed")
"""


def test_sigkill_mid_update_leaves_the_old_baseline_and_its_tables(tmp_path):
    root = tmp_path / "baselines"
    name = "perf/t.py::test_step"
    bu.update_baseline([_run_file(tmp_path, name, 1, TABLE)], root=root, command="first")
    path = root / SLUG / BASELINE_NAME
    before = path.read_bytes()
    old_table = kernel_table_file(root / SLUG, name).read_text()
    new_table = [{"name": "injected_kernel", "count": 1.0, "cuda_time_us": 5.0}]
    done = subprocess.run([sys.executable, "-c", KILLER, str(_run_file(tmp_path, name, 2, new_table)), str(root)],
                          capture_output=True, text=True)
    assert done.returncode == -9
    assert path.read_bytes() == before  # the commit point was never reached
    assert kernel_table_file(root / SLUG, name).read_text() == old_table  # the old JSON still finds its own table
    assert stale_temp_files(root / SLUG)  # the killed writer's temp file is there ...
    bu.update_baseline([_run_file(tmp_path, name, 3, TABLE)], root=root, command="next")
    assert stale_temp_files(root / SLUG) == []  # ... and the next update (under the lock) removes it
    tables = sorted(p.name for p in (root / SLUG / "kernels").iterdir())
    assert len(tables) == 1  # unreferenced tables (the killed run's) are gone too


def test_rewrites_keep_the_file_mode(tmp_path):
    path = tmp_path / "b.json"
    atomic_write_text(path, "{}")
    os.chmod(path, 0o644)
    atomic_write_text(path, "{\"a\": 1}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    fresh = tmp_path / "new.json"
    atomic_write_text(fresh, "{}")
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o044  # readable by others, as `open` would create it


def test_json_records_with_non_finite_values_are_written_as_standard_json(tmp_path):
    """The PSNR of identical images is inf: a record holding it is written (as "inf"), never lost to a ValueError."""
    from fluxperf.io import atomic_write_json

    path = atomic_write_json(tmp_path / "r.json", {"psnr_db": float("inf"), "errs": [float("nan"), 0.5]})
    assert json.loads(path.read_text()) == {"psnr_db": "inf", "errs": ["nan", 0.5]}
    assert "Infinity" not in path.read_text() and "NaN" not in path.read_text()
