"""A PyTorch profiler Chrome trace of one pipeline call, with the stage regions of fluxperf.measure.stage_regions.

`traced(pipe, path)` profiles what runs inside it (torch.profiler: CPU, plus CUDA kernels on a CUDA device) with
the regions prompt_encoding, denoising_step (one per step), decoding, postprocessing and pil_conversion installed,
and writes the trace atomically to `path` on exit: `.json` plain, `.json.gz` gzip-compressed (torch's
export_chrome_trace compresses by the suffix). Open it in https://ui.perfetto.dev or chrome://tracing.
Used by `fluxperf ladder --trace-file` and `fluxperf generate --trace-file`; call it after warm-up, so the trace
shows steady state, not compilation.

Example:
    >>> path = check_trace_path("trace.json.gz")           # doctest: +SKIP  (before building anything)
    >>> with traced(pipe, path, device="cuda") as rec:      # doctest: +SKIP
    ...     image = call()
    >>> region_counts(path)["denoising_step"]             # doctest: +SKIP
    4
"""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from fluxperf.errors import FluxperfError
from fluxperf.measure.stage_regions import REGIONS, StageRecorder, stage_regions

SUFFIXES = (".json", ".json.gz")


class TraceFileError(FluxperfError, ValueError):
    """A trace path is unusable (one line: the path, the rule, the fix)."""


def check_trace_path(path: str | Path, option: str = "--trace-file", error: type[Exception] = TraceFileError, *,
                     tags: Iterable[str] = ()) -> Path:
    """Refuse a trace path before any work: it must end in .json or .json.gz and be writable atomically there (not
    a directory, a name the file system accepts, a writable directory: fluxperf.io.check_writable_file, which
    creates the directory).

    Args:
        tags: the tags a caller will write `tagged(path, tag)` for (the ladder's rung names): each of those names
            is checked too (a tag lengthens the name).
    Returns:
        the path, user-expanded: the one to write (and to tag).
    Raises:
        `error` (TraceFileError by default): one line naming the option, the path, the rule and the fix.
    """
    from fluxperf.io import check_writable_file

    p = Path(path).expanduser()
    if not p.name.endswith(SUFFIXES) or p.name in SUFFIXES:
        raise error(f"{option} {str(path)!r}: must be a file name ending in .json or .json.gz (a Chrome trace). "
                    f"Fix: e.g. {option} trace.json.gz")
    check_writable_file(p, option=option, error=error)
    for tag in tags:
        check_writable_file(tagged(p, tag), option=f"{option} (as written for {tag!r})", error=error)
    return p


def tagged(path: str | Path, tag: str) -> Path:
    """`path` with `tag` before its .json/.json.gz suffix: tagged("out/trace.json.gz", "bf16") ->
    out/trace.bf16.json.gz (one trace per ladder rung)."""
    p = Path(path)
    suffix = next(s for s in sorted(SUFFIXES, key=len, reverse=True) if p.name.endswith(s))
    return p.with_name(f"{p.name[:-len(suffix)]}.{tag}{suffix}")


@contextlib.contextmanager
def traced(pipe, path: str | Path, *, device=None) -> Iterator[StageRecorder]:
    """Profile the block with the stage regions on `pipe`; write the Chrome trace to `path` when it ends.

    Args:
        pipe: a diffusers FLUX pipeline (see fluxperf.measure.stage_regions.stage_regions).
        path: .json or .json.gz (check it first with check_trace_path).
        device: the pipeline's device; CUDA adds the CUDA activity (kernels) to the trace.
    Yields:
        the StageRecorder of the regions (its breakdown() times the profiled call: profiler overhead included).
    Raises:
        StageRegionError: see stage_regions. Nothing is written if the block raises.
    """
    from torch.profiler import ProfilerActivity, profile

    from fluxperf.io import atomic_save

    activities = [ProfilerActivity.CPU]
    if str(device or "cpu").startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof, stage_regions(pipe, device=device) as rec:
        yield rec
    atomic_save(path, lambda tmp: prof.export_chrome_trace(str(tmp)))


def read_trace(path: str | Path) -> dict:
    """The Chrome trace JSON at `path` (.json or .json.gz)."""
    p = Path(path)
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "rt", encoding="utf-8") as f:
        return json.load(f)


def region_counts(path: str | Path) -> dict[str, int]:
    """{region: number of its CPU ranges} for each of REGIONS in the trace at `path`.

    Counts complete ("X") events of category "user_annotation" (record_function's CPU range); on CUDA the
    profiler adds a "gpu_user_annotation" copy of each range on the GPU timeline, not counted again here.
    """
    events = read_trace(path).get("traceEvents", [])
    counts = dict.fromkeys(REGIONS, 0)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "user_annotation" and e.get("name") in counts:
            counts[e["name"]] += 1
    return counts


__all__ = ["SUFFIXES", "TraceFileError", "check_trace_path", "tagged", "traced", "read_trace", "region_counts"]
