"""Host syncs: find the ops that make the CPU wait for the GPU, per denoising step.

Why: a compiled denoising step only runs at full speed while the host stays ahead of the GPU, queueing kernels.
One op that reads a device value back (`.item()`, `nonzero`, `bool(tensor)`, a blocking device->host copy) stalls
the host until the GPU drains its queue, every step. The flux-fast write-up found exactly that in diffusers'
scheduler (`index_for_timestep`: `nonzero()` + `.item()` on the first `step`) and removed it with
`scheduler.set_begin_index(0)` (huggingface/flux-fast, upstreamed in diffusers PR 11696: FluxPipeline and
FluxKontextPipeline 0.42.1 call it before their loop).

How: `torch.cuda.set_sync_debug_mode("warn")` makes c10 warn "called a synchronizing CUDA operation" from every
sync that goes through `c10::cuda::stream_synchronize` or `memcpy_and_sync` (`.item()`, `.tolist()`, `.cpu()`,
`nonzero`, a blocking host<->device copy, `Stream.synchronize()`); torch turns the C++ warning into a Python
`UserWarning` issued from the Python line that called the op, so `watch_syncs` records that line (the op) and the
Python stack. Explicit waits the mode does not flag (`torch.cuda.synchronize()`, `torch.accelerator.synchronize()`,
`torch.cuda.Event.synchronize()`) are recorded by wrapping those three names for the duration. Not seen: syncs in
torch.distributed / torch.sparse (torch's own limitation), and warn-mode warnings raised by C++ callers without
Python's warning handler (use mode="error" there: the sync then raises wherever it happens).

`syncs_per_step(pipe, call)` attributes the syncs of one pipeline call to its denoising steps (the ladder reports
it); `watch_syncs()` is the general context manager. Both need CUDA (on a CPU build the mode observes nothing: they
raise UnavailableError instead of reporting a false zero). The previous debug mode is always restored.

Example (on a GPU):
    >>> call = image_call(pipe, "schnell", spec, steps=4, seed=0, embeds=embeds, latents=latents)  # doctest: +SKIP
    >>> call()                                       # warm-up: compile, autotune  # doctest: +SKIP
    >>> syncs_per_step(pipe, call).per_step         # doctest: +SKIP
    (0, 0, 0, 0)
"""

from __future__ import annotations

import contextlib
import linecache
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fluxperf.errors import FluxperfError, UnavailableError

# c10/cuda/CUDAFunctions.cpp warn_or_error_on_sync(): the text of both the warning and the error.
SYNC_MESSAGE = "called a synchronizing CUDA operation"
MODES = ("warn", "error")
_MAX_FRAMES = 48  # innermost frames kept per stack (a pipeline call under pytest is ~60 deep)


class HostSyncError(FluxperfError, RuntimeError):
    """A region that must not synchronize with the host did (mode="error", or assert_no_host_syncs)."""


@dataclass(frozen=True)
class SyncEvent:
    """One host synchronization.

    Attributes:
        op: the source line that synchronized, e.g. "return indices[pos].item()" (explicit waits:
            "torch.cuda.synchronize()" etc.).
        where: "path:line in function" of that line.
        stack: the Python stack, outermost first, one "path:line in function: source" per frame.
        explicit: True for torch.cuda.synchronize / accelerator.synchronize / Event.synchronize.
    """

    op: str
    where: str
    stack: tuple[str, ...]
    explicit: bool = False

    def describe(self) -> str:
        return f"`{self.op}` at {self.where}"


@dataclass
class SyncLog:
    """What `watch_syncs` collects: `events` grows while the block runs (so callers can mark positions)."""

    mode: str
    events: list[SyncEvent] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.events)

    def ops(self, start: int = 0, stop: int | None = None) -> tuple[tuple[str, int], ...]:
        """(op described, times) for events[start:stop], most frequent first (first occurrence breaks ties)."""
        return tuple(Counter(e.describe() for e in self.events[start:stop]).most_common())


def observable() -> bool:
    """True when host syncs can be observed here (torch has CUDA and a device is visible)."""
    import torch

    return torch.cuda.is_available()


@contextlib.contextmanager
def watch_syncs(mode: str = "warn", *, explicit: bool = True) -> Iterator[SyncLog]:
    """Record every host sync of the block (mode="warn") or fail on the first one (mode="error").

    Args:
        mode: "warn": run the block to its end and collect each sync in the yielded SyncLog; "error": the first
            sync raises HostSyncError naming the op and its line (the block stops there).
        explicit: also record torch.cuda.synchronize(), torch.accelerator.synchronize() and
            torch.cuda.Event.synchronize() (the debug mode does not flag them).
    Yields:
        SyncLog, filled while the block runs.
    Raises:
        ValueError: an unknown mode (before anything is changed).
        UnavailableError: no CUDA here (the debug mode would observe nothing).
        HostSyncError: mode="error" and the block synchronized.
    The previous sync debug mode, the warning filters and the wrapped functions are restored however the block
    ends. Warnings other than the sync warning pass through to the handler that was active before.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a sync debug mode for a guard. Fix: use one of {list(MODES)}.")
    import torch

    if not torch.cuda.is_available():
        raise UnavailableError("CUDA", "torch.cuda.set_sync_debug_mode observes CUDA host syncs only and "
                               "torch.cuda.is_available() is False", "run on a CUDA GPU (python -m pytest -m gpu "
                               "tests/gpu/test_host_sync_gpu.py)")
    log = SyncLog(mode=mode)
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():  # restores filters and showwarning on exit
        forward = warnings.showwarning
        # "always": every sync is recorded, not only the first per line (the "default" action dedupes).
        warnings.filterwarnings("always", message=SYNC_MESSAGE, category=UserWarning)
        warnings.showwarning = _recorder(log, forward)
        try:
            with _explicit_waits(log, mode) if explicit else contextlib.nullcontext():
                torch.cuda.set_sync_debug_mode(mode)
                yield log
        except RuntimeError as exc:
            if mode == "error" and not isinstance(exc, HostSyncError) and str(exc).startswith(SYNC_MESSAGE):
                event = _event_from_traceback(exc.__traceback__)
                raise HostSyncError(f"host sync in a region that must not sync: {event.describe()}. Fix: keep "
                                    "the value on the device (no .item()/.cpu()/nonzero/if tensor: in the step; a "
                                    "scheduler: set_begin_index(0) before the loop)") from exc
            raise
        finally:
            torch.cuda.set_sync_debug_mode(previous)


def assert_no_host_syncs(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run fn(*args, **kwargs) under watch_syncs("warn"); return its result, or raise HostSyncError listing every
    sync (op, line, count) and the first one's stack."""
    with watch_syncs("warn") as log:
        result = fn(*args, **kwargs)
    if log.count:
        raise HostSyncError(f"{log.count} host sync(s) where none may happen: "
                            + "; ".join(f"{op} x{n}" for op, n in log.ops())
                            + "\nfirst stack:\n  " + "\n  ".join(log.events[0].stack))
    return result


@dataclass(frozen=True)
class StepSyncs:
    """Host syncs of one pipeline call, attributed to its denoising steps.

    Step k's window runs from the end of step k-1's `scheduler.step` (step 0: from the pipeline entering its
    progress bar, right before the loop) to the end of step k's `scheduler.step`, so every op of the loop body
    (timestep broadcast, transformer, scheduler step, callbacks, progress bar) lands in exactly one step.

    Attributes:
        steps: denoising steps seen (scheduler.step calls).
        per_step: syncs in each step, (steps,) ints.
        setup: syncs before the loop (prompt encoding, latents, set_timesteps' host->device copy: once per call).
        tail: syncs after the loop (VAE decode, postprocessing to numpy/PIL: once per call).
        ops: (op described, times) of the syncs inside the steps, most frequent first.
        first_stack: the first in-step sync's Python stack (outermost first); () when there was none.
        mode: the debug mode used ("warn").
    """

    steps: int
    per_step: tuple[int, ...]
    setup: int
    tail: int
    ops: tuple[tuple[str, int], ...]
    first_stack: tuple[str, ...]
    mode: str = "warn"

    @property
    def count(self) -> int:
        """Syncs inside the denoising steps, all steps together."""
        return sum(self.per_step)

    @property
    def per_step_mean(self) -> float:
        return self.count / self.steps if self.steps else 0.0

    def describe(self) -> str:
        """One line: 'no host sync in 4 denoising steps' or the counts and the ops."""
        if not self.count:
            return f"no host sync in {self.steps} denoising steps (setup {self.setup}, tail {self.tail})"
        ops = "; ".join(f"{op} x{n}" for op, n in self.ops)
        return f"{self.count} host sync(s) in {self.steps} denoising steps (per step {list(self.per_step)}): {ops}"

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "per_step": list(self.per_step), "count": self.count,
                "per_step_mean": self.per_step_mean, "setup": self.setup, "tail": self.tail,
                "ops": [list(o) for o in self.ops], "first_stack": list(self.first_stack), "mode": self.mode}


def syncs_per_step(pipe, call: Callable[[], Any], *, explicit: bool = True) -> StepSyncs:
    """Run `call()` (one generation with `pipe`, e.g. fluxperf.measure.ladder_run.image_call(...)) under
    watch_syncs("warn") and attribute each sync to setup, a denoising step or the tail (see StepSyncs).

    Warm the pipeline up first (one call): a first call's compilation and autotuning synchronize by design.

    Args:
        pipe: a diffusers FLUX pipeline (anything whose __call__ enters `self.progress_bar(...)` right before its
            denoising loop and calls `self.scheduler.step` once per step, as all FLUX pipelines do).
        call: zero-argument callable that runs the pipeline once.
        explicit: also record explicit waits (see watch_syncs).
    Returns:
        StepSyncs.
    Raises:
        UnavailableError: no CUDA here.
        FluxperfError: the call never entered the pipeline's loop (no progress bar or no scheduler.step seen).
    `pipe.scheduler.step` and `pipe.progress_bar` are wrapped (instance attributes) for the call and restored.
    """
    starts: list[int] = []  # log positions when the progress bar was entered (the loop starts right after)
    ends: list[int] = []  # log positions when each scheduler.step returned
    with watch_syncs("warn", explicit=explicit) as log:
        with _marking(pipe.scheduler, "step", lambda: ends.append(log.count), after=True), \
                _marking(pipe, "progress_bar", lambda: starts.append(log.count), after=False):
            call()
    loop = starts[0] if starts else None
    if loop is None or not ends:
        raise FluxperfError(f"syncs_per_step: the call never ran {type(pipe).__name__}'s denoising loop "
                            f"(progress bar entered: {loop is not None}, scheduler.step calls: {len(ends)}). Fix: "
                            "pass a call that runs this pipeline, e.g. image_call(pipe, ...).")
    bounds = [loop, *ends]
    in_steps = slice(loop, ends[-1])
    events = log.events[in_steps]
    return StepSyncs(steps=len(ends), per_step=tuple(b - a for a, b in zip(bounds, bounds[1:])), setup=loop,
                     tail=log.count - ends[-1], ops=log.ops(loop, ends[-1]),
                     first_stack=events[0].stack if events else (), mode=log.mode)


# -- internals ---------------------------------------------------------------------------------------------
def _recorder(log: SyncLog, forward: Callable[..., Any]) -> Callable[..., None]:
    """A warnings.showwarning that records sync warnings (with the stack of the frame that issued them) and
    forwards every other warning to the handler that was active before."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and str(message).startswith(SYNC_MESSAGE):
            # Called synchronously from the warning machinery: the issuing frame (the one the warning names by
            # filename and line: for torch's C++ warning, the Python line that called the op) is still on the stack.
            log.events.append(_event_from_frame(_issuing_frame(sys._getframe(1), filename, lineno)))
        else:
            forward(message, category, filename, lineno, file, line)

    return showwarning


@contextlib.contextmanager
def _explicit_waits(log: SyncLog, mode: str) -> Iterator[None]:
    """Wrap the explicit waits the debug mode does not flag; restore them on exit."""
    import torch

    targets = [(torch.cuda, "synchronize", "torch.cuda.synchronize()"),
               (torch.cuda.Event, "synchronize", "torch.cuda.Event.synchronize()")]
    if hasattr(torch, "accelerator") and hasattr(torch.accelerator, "synchronize"):
        targets.append((torch.accelerator, "synchronize", "torch.accelerator.synchronize()"))
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]
    try:
        for (owner, name, label), (_, _, original) in zip(targets, saved):
            setattr(owner, name, _wait_recorder(original, label, log, mode))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _wait_recorder(original, label: str, log: SyncLog, mode: str):
    def wait(*args, **kwargs):
        event = _event_from_frame(sys._getframe(1), op=label, explicit=True)
        if mode == "error":
            raise HostSyncError(f"host sync in a region that must not sync: {event.describe()}")
        log.events.append(event)
        return original(*args, **kwargs)

    wait.__wrapped__ = original
    return wait


@contextlib.contextmanager
def _marking(owner, name: str, mark: Callable[[], Any], *, after: bool) -> Iterator[None]:
    """Make `owner.name(...)` call `mark()` before (after=False) or after (after=True) it, as an instance
    attribute removed (or the previous one put back) on exit."""
    had = name in vars(owner)
    previous = vars(owner).get(name)
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if not after:
            mark()
        result = original(*args, **kwargs)
        if after:
            mark()
        return result

    setattr(owner, name, wrapped)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, previous)
        else:
            delattr(owner, name)


def _skip(frame) -> bool:
    """Frames of the warning machinery and of this module are not where the sync happened."""
    return frame.f_code.co_filename in (warnings.__file__, __file__)


def _issuing_frame(frame, filename: str, lineno: int):
    """The innermost frame at (filename, lineno), else the first frame outside the warning machinery."""
    probe = frame
    while probe is not None:
        if probe.f_code.co_filename == filename and probe.f_lineno == lineno:
            return probe
        probe = probe.f_back
    return frame


def _event_from_frame(frame, *, op: str | None = None, explicit: bool = False) -> SyncEvent:
    while frame is not None and _skip(frame):
        frame = frame.f_back
    summary = traceback.StackSummary.extract(traceback.walk_stack(frame), limit=_MAX_FRAMES)[::-1]
    return _event(summary, op=op, explicit=explicit)


def _event_from_traceback(tb) -> SyncEvent:
    """The event of an error-mode RuntimeError: its innermost frame is the line that synchronized."""
    summary = [f for f in traceback.extract_tb(tb) if f.filename not in (warnings.__file__, __file__)]
    return _event(summary[-_MAX_FRAMES:])


def _event(frames, *, op: str | None = None, explicit: bool = False) -> SyncEvent:
    if not frames:
        return SyncEvent(op=op or "?", where="<no Python frame>", stack=(), explicit=explicit)
    inner = frames[-1]
    line = inner.line or linecache.getline(inner.filename, inner.lineno).strip()
    stack = tuple(f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}" for f in frames)
    return SyncEvent(op=op or line or "?", where=f"{inner.filename}:{inner.lineno} in {inner.name}", stack=stack,
                     explicit=explicit)


__all__ = ["SYNC_MESSAGE", "HostSyncError", "SyncEvent", "SyncLog", "StepSyncs", "observable", "watch_syncs",
           "assert_no_host_syncs", "syncs_per_step"]
