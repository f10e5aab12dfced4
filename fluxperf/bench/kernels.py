"""The regression explainer: per-kernel CUDA time tables (torch.profiler) and what changed between two.

A kernel table has one row per kernel name: `name`, `count` (launches per iteration) and `cuda_time_us`
(device time per iteration, microseconds). The benchmark tier stores one per benchmark next to its baseline
(`kernel_table_path(baselines/<gpu>/kernels, benchmark)`); when a benchmark regresses, the explainer
profiles the current run and `compare_kernel_tables` names the kernels that got slower, faster, appeared or
vanished, largest change first.

Example:
    >>> table = profile_kernel_table(lambda: model(x))  # doctest: +SKIP
    >>> save_kernel_table(table, "baselines/nvidia-h100-80gb-hbm3/kernels/step.csv")  # doctest: +SKIP
    >>> print(to_markdown(compare_kernel_tables(load_kernel_table(old), table)))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path

from fluxperf.errors import UnavailableError
from fluxperf.io import atomic_write_text as atomic_write

COLUMNS = ("name", "count", "cuda_time_us")
DIFF_COLUMNS = ("name", "change", "baseline_count", "current_count", "baseline_us", "current_us", "delta_us",
                "rel_change")


def profile_kernel_table(fn: Callable[[], object], *, warmup: int = 2, iters: int = 3, device: str = "cuda"):
    """Profile `fn()` and return its per-kernel table (pandas DataFrame), per iteration, slowest first.

    Args:
        fn: the work (e.g. one transformer step); called `warmup + iters` times.
        warmup: untimed calls first (compilation, autotuning, allocator growth stay out of the table).
        iters: profiled calls; counts and times are divided by it.
        device: "cuda" (kernels, device time) or "cpu" (aten ops, self CPU time; for tests and CPU-only
            machines — the time column is then still named cuda_time_us, and df.attrs["device"] says "cpu").

    Example:
        >>> df = profile_kernel_table(lambda: torch.ones(8) * 2, device="cpu", warmup=0, iters=1)  # doctest: +SKIP
    """
    import pandas as pd
    import torch
    from torch.profiler import ProfilerActivity, profile

    if iters < 1 or warmup < 0:
        raise ValueError(f"iters={iters} must be >= 1 and warmup={warmup} >= 0.")
    cuda = device == "cuda"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device={device!r} must be 'cuda' or 'cpu'.")
    if cuda and not torch.cuda.is_available():
        raise UnavailableError("CUDA", "torch.cuda.is_available() is False", "run on a GPU, or pass device='cpu'")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        sync()
    rows = [_row(evt, cuda, iters) for evt in prof.key_averages()]
    df = pd.DataFrame([r for r in rows if r is not None], columns=list(COLUMNS))
    df = df.sort_values("cuda_time_us", ascending=False, ignore_index=True)
    df.attrs["device"] = device
    return df


def _row(evt, cuda: bool, iters: int) -> dict | None:
    from torch.autograd import DeviceType

    if cuda:
        if evt.device_type != DeviceType.CUDA:
            return None
        total = getattr(evt, "self_device_time_total", None)
        if total is None:  # torch < 2.4 spelled it cuda
            total = evt.self_cuda_time_total
    else:
        if evt.device_type != DeviceType.CPU or evt.self_cpu_time_total <= 0:
            return None
        total = evt.self_cpu_time_total
    return {"name": evt.key, "count": evt.count / iters, "cuda_time_us": total / iters}


def save_kernel_table(df, path: str | os.PathLike) -> Path:
    """Write a kernel table as CSV, atomically. Returns the path."""
    _check_table(df, str(path))
    buf = io.StringIO()
    df.loc[:, list(COLUMNS)].to_csv(buf, index=False)
    return atomic_write(path, buf.getvalue())


def load_kernel_table(path: str | os.PathLike):
    """Read a kernel table CSV written by save_kernel_table (columns name, count, cuda_time_us)."""
    import pandas as pd

    if not Path(path).exists():
        raise FileNotFoundError(f"no kernel table at {path}; store one with the baseline "
                                "(fluxperf baseline update) or profile with `fluxperf explain --target`.")
    df = pd.read_csv(path)
    _check_table(df, str(path))
    return df


def compare_kernel_tables(baseline, current, top: int = 20):
    """What changed per kernel, largest |delta| first (at most `top` rows).

    `change` is "slower", "faster", "new" (only in current), "vanished" (only in baseline) or "same".
    Times are per iteration (us); rel_change is current/baseline - 1 (NaN for new/vanished).

    Example:
        >>> import pandas as pd
        >>> a = pd.DataFrame({"name": ["gemm", "copy"], "count": [1, 1], "cuda_time_us": [100.0, 10.0]})
        >>> b = pd.DataFrame({"name": ["gemm", "fp8"], "count": [1, 2], "cuda_time_us": [150.0, 5.0]})
        >>> list(compare_kernel_tables(a, b)["change"])
        ['slower', 'vanished', 'new']
    """
    import numpy as np
    import pandas as pd

    _check_table(baseline, "baseline")
    _check_table(current, "current")
    if top < 1:
        raise ValueError(f"top={top} must be >= 1.")
    base = _aggregate(baseline).rename(columns={"count": "baseline_count", "cuda_time_us": "baseline_us"})
    cur = _aggregate(current).rename(columns={"count": "current_count", "cuda_time_us": "current_us"})
    merged = pd.merge(base, cur, on="name", how="outer", indicator=True)
    merged["delta_us"] = merged["current_us"].fillna(0.0) - merged["baseline_us"].fillna(0.0)
    merged["rel_change"] = merged["current_us"] / merged["baseline_us"] - 1.0
    side = merged.pop("_merge").astype(str)
    merged["change"] = np.select(
        [side == "right_only", side == "left_only", merged["delta_us"] > 0, merged["delta_us"] < 0],
        ["new", "vanished", "slower", "faster"], default="same")
    merged = merged.reindex(merged["delta_us"].abs().sort_values(ascending=False, kind="stable").index)
    return merged.loc[:, list(DIFF_COLUMNS)].head(top).reset_index(drop=True)


def totals(baseline, current) -> dict:
    """Total device time per iteration of both tables (us) and their ratio."""
    b, c = float(baseline["cuda_time_us"].sum()), float(current["cuda_time_us"].sum())
    return {"baseline_us": b, "current_us": c, "ratio": c / b if b else float("inf")}


def to_markdown(diff, *, max_name: int = 80) -> str:
    """A GitHub-flavoured markdown table of a compare_kernel_tables result (long kernel names shortened)."""
    header = "| kernel | change | count (base → cur) | base µs | cur µs | Δ µs | Δ % |\n|---|---|---|---:|---:|---:|---:|\n"
    lines = []
    for r in diff.itertuples(index=False):
        name = r.name if len(r.name) <= max_name else r.name[: max_name - 1] + "…"
        name = name.replace("|", "\\|")
        lines.append(f"| `{name}` | {r.change} | {_num(r.baseline_count)} → {_num(r.current_count)} | "
                     f"{_num(r.baseline_us)} | {_num(r.current_us)} | {r.delta_us:+.1f} | {_pct(r.rel_change)} |")
    return header + "\n".join(lines) + "\n"


def kernel_table_path(root: str | os.PathLike, benchmark: str) -> Path:
    """Where the kernel table of `benchmark` lives under `root` (e.g. baselines/<gpu>/kernels).

    The name is the one fluxperf.bench.baseline.safe_name gives (file name and test id of the node id, made
    filesystem-safe), so tables stored with a baseline are found by the explainer.

    Example:
        >>> kernel_table_path("k", "perf/test_step.py::test_step[bf16]").as_posix()
        'k/test_step.py-test_step-bf16.csv'
    """
    tail = benchmark.split("/")[-1]
    return Path(root) / (re.sub(r"[^A-Za-z0-9_.-]+", "-", tail).strip("-") + ".csv")


def table_from_records(records):
    """A kernel table from a list of {name, count, cuda_time_us} dicts (as stored in extra_info["kernel_table"])."""
    import pandas as pd

    df = pd.DataFrame.from_records(list(records or []), columns=list(COLUMNS))
    _check_table(df, "records")
    return df


def _aggregate(df):
    return df.groupby("name", as_index=False)[["count", "cuda_time_us"]].sum()


def _check_table(df, where: str) -> None:
    missing = [c for c in COLUMNS if c not in getattr(df, "columns", ())]
    if missing:
        raise ValueError(f"kernel table {where} lacks columns {missing}; expected {list(COLUMNS)} "
                         "(made by profile_kernel_table).")


def _num(x) -> str:
    return "–" if x != x else f"{x:.1f}" if isinstance(x, float) and not float(x).is_integer() else f"{x:g}"


def _pct(x) -> str:
    return "–" if x != x else f"{x:+.1%}"
