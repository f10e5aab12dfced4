"""Write a ladder run: table (stdout/markdown), CSV, JSON records with the environment, PNG images, bar chart.

Image latency columns: image_runs timed runs of the whole pipeline (warm-up excluded), their average, min, p50,
p90 and p99 (fluxperf.bench.latency: numpy's linear method, Hyndman & Fan type 7; a percentile from fewer runs
than it needs is empty in the CSV, null in the JSON and "n/a (needs N runs)" in the table). The JSON also holds
each rung's per-stage breakdown ("stages", fluxperf.measure.stage_regions) and its trace file, if any.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict
from pathlib import Path

from fluxperf.bench.latency import METHOD_TEXT, percentile_of_column, short_cell, stat_columns
from fluxperf.io import atomic_save, atomic_write_json, atomic_write_text
from fluxperf.measure.ladder_run import LadderResult

IMAGE_STATS = stat_columns("image_")  # image_avg_ms, image_min_ms, image_p50_ms, image_p90_ms, image_p99_ms
COLUMNS = ["rung", "status", "image_runs", *IMAGE_STATS, "step_median_ms", "speedup_step", "psnr_db", "ssim",
           "max_abs_error", "cached_steps", "syncs_per_step", "quantized_linear", "attention", "apply_s", "peak_memory_gib", "error"]
INT_COLUMNS = ("image_runs", "cached_steps")  # whole numbers: pandas' nullable Int64, so a missing cell stays NA, not 1.0
MISSING = "-"  # how the markdown table shows a value a rung does not have (failed, or not applicable)


def table(result: LadderResult):
    """One row per rung as a pandas DataFrame (speed-up relative to the reference rung's step time)."""
    import pandas as pd

    ref = next((r for r in result.rungs if r.rung == result.options.reference and r.step_ms), None)
    rows = []
    for r in result.rungs:
        step = r.step_ms["median_ms"] if r.step_ms else None
        applied = r.applied or {}
        lat = r.image_latency or {}
        rows.append({
            "rung": r.rung, "status": r.status, "image_runs": lat.get("n"),
            **{c: lat.get(c.removeprefix("image_")) for c in IMAGE_STATS},
            "step_median_ms": step,
            "speedup_step": (ref.step_ms["median_ms"] / step) if (ref and step) else None,
            "psnr_db": r.psnr_db, "ssim": r.ssim, "max_abs_error": r.max_abs_error, "cached_steps": r.cached_steps,
            "syncs_per_step": (r.host_syncs or {}).get("per_step_mean"),
            "quantized_linear": _quantized(applied), "attention": applied.get("attention_backend"),
            "apply_s": r.apply_s, "peak_memory_gib": r.peak_memory_gib, "error": r.error,
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    return df


def _quantized(applied: dict) -> str | None:
    """"<count> <kind>" (e.g. "494 float8", "502 int8"), or None for an unquantized rung."""
    count = applied.get("quantized_linear_count", applied.get("float8_linear_count"))
    return f"{count} {applied.get('quantize_kind', 'float8')}" if count else None


def markdown(df, reference: str | None = None) -> str:
    """The table as markdown (plain text without tabulate), then what the latency columns are and the percentile
    method, and (given `reference`) which rung PSNR/SSIM and the speed-up are measured against.

    A percentile a measured rung lacks runs for reads "n/a (needs N runs)"; whole-number columns (INT_COLUMNS) stay
    whole; a value a rung does not have (a failed rung's measurements, a rung without block cache's cached_steps)
    reads MISSING, never "nan"."""
    import pandas as pd

    shown = df.drop(columns=["error"]).astype(object)
    shown = shown.where(pd.notna(shown), None)  # NaN/NA -> None: tabulate's missingval, not a float "nan"

    def cells(col, values):  # object dtype, or pandas would turn [1, None] back into [1.0, nan]
        shown[col] = pd.Series(list(values), index=shown.index, dtype=object)

    cells("psnr_db", ("inf" if v is not None and math.isinf(v) else v for v in shown["psnr_db"]))
    for col in INT_COLUMNS:
        cells(col, (None if v is None else int(v) for v in shown[col]))
    measured = shown["image_runs"].notna()
    for col in IMAGE_STATS:
        p = percentile_of_column(col)
        if p is not None:
            cells(col, (short_cell(v, p) if m else None for v, m in zip(shown[col], measured)))
    if _has_tabulate():
        text = shown.to_markdown(index=False, floatfmt=".2f", missingval=MISSING)
    else:
        text = shown.where(shown.notna(), MISSING).to_string(index=False)
    runs = sorted({int(n) for n in shown["image_runs"].dropna()})
    against = f" psnr_db, ssim, max_abs_error and speedup_step are against the reference rung {reference}." \
        if reference else ""
    return (f"{text}\n\nimage_*: latency of the whole pipeline over {'/'.join(map(str, runs)) or 'no'} timed runs "
            f"per rung (warm-up excluded); {METHOD_TEXT}.{against}")


def write_outputs(result: LadderResult, out_dir: str | Path, command: str | None = None) -> dict[str, Path]:
    """Write ladder.csv, ladder.json, ladder.md, ladder.png and <rung>.png under out_dir (atomically)."""
    out = Path(out_dir)
    df = table(result)
    paths = {
        "csv": atomic_save(out / "ladder.csv", lambda p: df.to_csv(p, index=False)),
        "json": atomic_write_json(out / "ladder.json", _record(result, command)),
        "md": atomic_write_text(out / "ladder.md", markdown(df, reference=result.options.reference) + "\n"),
    }
    for r in result.rungs:
        if r.image is not None:
            paths[f"image:{r.rung}"] = atomic_save(out / f"{r.rung}.png", lambda p, im=r.image: im.save(p, "PNG"))
    paths["chart"] = atomic_save(out / "ladder.png", lambda p: _bar_chart(df, result, p))
    return paths


def check_out_dir(out_dir: str | Path, option: str = "out") -> Path:
    """Create `out_dir` (with parents) and prove it writable by writing and removing a probe file, so a bad
    output directory is found before any rung is measured, not after.

    Args:
        out_dir: the output directory.
        option: how the caller names it in the message ("--out" on the command line).
    Returns:
        the directory as a Path.
    Raises:
        OptionError: it cannot be created or written (one line: the path, what failed, the fix).
    """
    import tempfile

    from fluxperf.measure.ladder_run import OptionError

    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".fluxperf-write-probe-"):
            pass
    except OSError as exc:  # read-only file system, no permission, a file in the way, ...
        raise OptionError(f"{option} {str(out_dir)!r}: cannot write there ({type(exc).__name__}: "
                          f"{exc.strerror or exc}). Fix: choose a writable directory with {option}.") from None
    return out


def _record(result: LadderResult, command: str | None) -> dict:
    rungs = []
    for r in result.rungs:
        d = asdict(r)
        d.pop("image")
        if d["psnr_db"] is not None and math.isinf(d["psnr_db"]):
            d["psnr_db"] = "inf"
        rungs.append(d)
    return {"command": command or " ".join(sys.argv), "options": asdict(result.options),
            "environment": result.environment, "ok": result.ok, "latency_method": METHOD_TEXT, "rungs": rungs}


def _bar_chart(df, result: LadderResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(df)), 4))
    values = df["step_median_ms"].fillna(0).tolist()
    bars = ax.bar(df["rung"], values, color=["tab:blue" if s == "ok" else "tab:red" for s in df["status"]])
    for bar, p, s in zip(bars, df["psnr_db"], df["status"]):
        label = "FAILED" if s != "ok" else ("ref" if p is not None and math.isinf(p) else
                                            (f"{p:.1f} dB" if p is not None else ""))
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    o = result.options
    ax.set_ylabel("transformer step, median ms")
    ax.set_title(f"FLUX.1-{o.variant} ({o.size}) {o.height}x{o.width} on {_device_name(result)}")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _device_name(result: LadderResult) -> str:
    gpu = result.environment.get("gpu")
    return gpu["name"] if gpu else "CPU"


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None
