"""Named stage regions around a FLUX pipeline call, and the per-stage time breakdown they give.

Inside `with stage_regions(pipe) as rec:` each call of the pipeline runs these regions, as
`torch.autograd.profiler.record_function` ranges (visible in a torch.profiler trace) and timed by `rec`:

    prompt_encoding   pipe.encode_prompt (with precomputed embeddings: only the repeat and the text ids)
    denoising_step    one per step: from the end of the previous step (the first: scheduler.set_begin_index(0),
                      just before FluxPipeline's loop) to the end of scheduler.step; so the transformer
                      call(s), the scheduler step and the loop's bookkeeping
    decoding          pipe.vae.decode (an exported decoder's adapter included)
    postprocessing    pipe.image_processor.postprocess (denormalize, device->host copy, to numpy / PIL)
    pil_conversion    pipe.image_processor.numpy_to_pil, nested inside postprocessing

Nothing of diffusers' FluxPipeline.__call__ (diffusers 0.42.1, pipelines/flux/pipeline_flux.py) is copied: the
regions wrap the methods it calls, set as instance attributes on the pipeline and its components and removed on
exit (what was there before, e.g. fluxperf's export adapter on vae.decode, is called inside and put back).
The transformer itself is not hooked: a hook would land inside a torch.compile'd module and break its graph.

Times: CUDA events at each region's ends on a CUDA device (GPU time of the work enqueued in the region, read
after the call), time.perf_counter on CPU; milliseconds.

Example:
    >>> with stage_regions(pipe) as rec:                    # doctest: +SKIP
    ...     image = rec.timed(call)()
    >>> rec.breakdown()["median_ms"]["decoding"]            # doctest: +SKIP
    3.1
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fluxperf.errors import FluxperfError

REGIONS = ("prompt_encoding", "denoising_step", "decoding", "postprocessing", "pil_conversion")
STAGES = ("prompt_encoding", "denoising", "decoding", "postprocessing", "pil_conversion", "other", "total")
NOTE = ("denoising = the sum of the denoising_step regions; pil_conversion is inside postprocessing; other = the "
        "whole call minus prompt_encoding, denoising, decoding and postprocessing (input checks, latents, "
        "timesteps, unpacking)")
_MARKER = "_fluxperf_stage_regions"
_MISSING = object()


class StageRegionError(FluxperfError, RuntimeError):
    """The stage regions cannot be installed or did not see the pipeline's loop (one line: what and the fix)."""


@dataclass
class _Call:
    regions: list[tuple[str, Any, Any]] = field(default_factory=list)  # (name, start mark, end mark)
    start: Any = None
    end: Any = None


class StageRecorder:
    """Marks of each call's regions; `breakdown()` turns them into per-stage milliseconds."""

    def __init__(self, device=None):
        self.cuda = str(device or "cpu").startswith("cuda")
        self.calls: list[_Call] = []
        self._current: _Call | None = None
        self._in_call = False

    # -- marks --------------------------------------------------------------------------------------
    def mark(self):
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1e3

    # -- recording ----------------------------------------------------------------------------------
    def timed(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """`fn` wrapped so that each call is one recorded call (its whole time kept as "total")."""
        def call():
            self._current, self._in_call = _Call(start=self.mark()), True
            try:
                return fn()
            finally:
                self._current.end = self.mark()
                self.calls.append(self._current)
                self._current, self._in_call = None, False
        return call

    def add(self, name: str, start, end) -> None:
        if self._current is None or (not self._in_call and name == "prompt_encoding"):
            # outside rec.timed(...): a pipeline call begins with its prompt encoding
            self._current = _Call()
            self.calls.append(self._current)
        self._current.regions.append((name, start, end))

    # -- results ------------------------------------------------------------------------------------
    def breakdown(self, last: int | None = None) -> dict:
        """Per-stage median over the recorded calls (the `last` ones only, e.g. without warm-up calls).

        Returns:
            {"clock": "cuda_events" | "perf_counter", "runs": n, "median_ms": {stage: ms} for STAGES present
            in every call ("total"/"other" only for calls made through `timed`), "denoising_step_median_ms":
            [ms per step], "note": NOTE}.
        Raises:
            StageRegionError: no call was recorded.
        """
        calls = self.calls[-last:] if last else self.calls
        if not calls:
            raise StageRegionError("no pipeline call was recorded inside stage_regions. Fix: call the pipeline "
                                   "inside the `with stage_regions(pipe)` block.")
        per_call = [self._per_call(c) for c in calls]
        common = [s for s in STAGES if all(s in d for d in per_call)]
        n_steps = min(len(d["steps"]) for d in per_call)
        return {
            "clock": "cuda_events" if self.cuda else "perf_counter", "runs": len(calls),
            "median_ms": {s: statistics.median(d[s] for d in per_call) for s in common},
            "denoising_step_median_ms": [statistics.median(d["steps"][i] for d in per_call) for i in range(n_steps)],
            "note": NOTE,
        }

    def _per_call(self, c: _Call) -> dict:
        out: dict[str, Any] = {"steps": []}
        for name, start, end in c.regions:
            ms = self.elapsed_ms(start, end)
            if name == "denoising_step":
                out["steps"].append(ms)
            else:
                out[name] = out.get(name, 0.0) + ms
        if out["steps"]:
            out["denoising"] = sum(out["steps"])
        if c.start is not None and c.end is not None:
            out["total"] = self.elapsed_ms(c.start, c.end)
            out["other"] = out["total"] - sum(out.get(s, 0.0) for s in
                                              ("prompt_encoding", "denoising", "decoding", "postprocessing"))
        return out


@contextlib.contextmanager
def stage_regions(pipe, *, device=None) -> Iterator[StageRecorder]:
    """Install the REGIONS on `pipe` (a diffusers FluxPipeline / FluxKontextPipeline) for the block's duration.

    Args:
        pipe: the pipeline; its encode_prompt, scheduler, vae and image_processor are wrapped.
        device: the pipeline's device ("cuda..." times with CUDA events; default CPU perf_counter).
    Yields:
        a StageRecorder (wrap a zero-argument call in `rec.timed(call)` to also time the whole call).
    Raises:
        StageRegionError: regions are already installed on this pipeline (nested use), or a scheduler step ran
            without set_begin_index before the loop (not FluxPipeline's loop).
    """
    from torch.autograd.profiler import record_function

    if getattr(pipe, _MARKER, False):
        raise StageRegionError("stage regions are already installed on this pipeline (nested stage_regions or "
                               "traced). Fix: leave the outer block before entering another.")
    rec = StageRecorder(device)
    open_step: dict[str, Any] = {}  # the open denoising_step: record_function and start mark
    scheduler = pipe.scheduler

    def region(name: str, fn: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            with record_function(name):
                start = rec.mark()
                out = fn(*args, **kwargs)
                rec.add(name, start, rec.mark())
                return out
        return wrapped

    def open_next_step() -> None:
        rf = record_function("denoising_step")
        rf.__enter__()
        open_step.update(rf=rf, start=rec.mark())

    def close_step() -> None:
        rf, start = open_step.pop("rf"), open_step.pop("start")
        end = rec.mark()
        rf.__exit__(None, None, None)
        rec.add("denoising_step", start, end)

    set_begin_index, step = scheduler.set_begin_index, scheduler.step

    def begin(*args, **kwargs):
        out = set_begin_index(*args, **kwargs)
        if "rf" in open_step:  # a previous call ended inside a step (raised): its range is closed here
            close_step()
        open_step["done"] = 0
        open_next_step()
        return out

    def stepped(*args, **kwargs):
        if "rf" not in open_step:
            raise StageRegionError("scheduler.step ran with no denoising_step region open: the pipeline did not "
                                   "call scheduler.set_begin_index(0) before its loop (FluxPipeline does since "
                                   "diffusers 0.35). Fix: use diffusers >= 0.35 or run without stage regions.")
        out = step(*args, **kwargs)
        close_step()
        open_step["done"] = open_step.get("done", 0) + 1
        if open_step["done"] < len(scheduler.timesteps):
            open_next_step()
        return out

    processor = pipe.image_processor
    patches = [(pipe, "encode_prompt", region("prompt_encoding", pipe.encode_prompt)),
               (scheduler, "set_begin_index", begin), (scheduler, "step", stepped),
               (pipe.vae, "decode", region("decoding", pipe.vae.decode)),
               (processor, "postprocess", region("postprocessing", processor.postprocess)),
               (processor, "numpy_to_pil", region("pil_conversion", processor.numpy_to_pil))]
    saved = [(obj, name, vars(obj).get(name, _MISSING)) for obj, name, _ in patches]
    try:
        for obj, name, fn in patches:
            object.__setattr__(obj, name, fn)  # instance attribute: found before the class's method
        object.__setattr__(pipe, _MARKER, True)
        yield rec
    finally:
        if "rf" in open_step:  # the call raised inside a step: close its range so the profiler stays balanced
            open_step.pop("rf").__exit__(None, None, None)
        for obj, name, previous in reversed(saved):
            if previous is _MISSING:
                vars(obj).pop(name, None)
            else:
                object.__setattr__(obj, name, previous)
        vars(pipe).pop(_MARKER, None)


__all__ = ["REGIONS", "STAGES", "NOTE", "StageRecorder", "StageRegionError", "stage_regions"]
