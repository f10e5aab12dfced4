"""Timing GPU (and CPU) work correctly: warm-up separated from steady state, per-round samples kept.

On CUDA each round is bracketed by CUDA events (device time of everything enqueued between them, with a
synchronize before reading); on CPU by perf_counter. Warm-up rounds (compilation, autotuning, allocator
growth) are timed separately and never mixed into the steady-state statistics.

Example:
    >>> t = time_fn(lambda: sum(range(1000)), warmup=1, rounds=5)
    >>> t.rounds, t.median_ms >= 0
    (5, True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Timing:
    """Per-round samples (milliseconds) and their summary."""

    samples_ms: tuple[float, ...]
    warmup_ms: tuple[float, ...] = field(default=())
    clock: str = "perf_counter"

    @property
    def rounds(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    def quantile_ms(self, q: float) -> float:
        """Linear-interpolated quantile q in [0, 1] of the samples."""
        xs = sorted(self.samples_ms)
        if len(xs) == 1:
            return xs[0]
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    @property
    def p90_ms(self) -> float:
        return self.quantile_ms(0.9)

    @property
    def iqr_ms(self) -> float:
        return self.quantile_ms(0.75) - self.quantile_ms(0.25)

    def summary(self) -> dict:
        """Plain-dict summary for records (samples included)."""
        return {
            "median_ms": self.median_ms, "p90_ms": self.p90_ms, "iqr_ms": self.iqr_ms, "min_ms": self.min_ms,
            "mean_ms": self.mean_ms, "rounds": self.rounds, "clock": self.clock,
            "samples_ms": list(self.samples_ms), "warmup_ms": list(self.warmup_ms),
        }

    def to_dict(self) -> dict:
        return asdict(self)


def time_fn(fn: Callable[[], object], *, warmup: int = 1, rounds: int = 5, device=None,
            progress: Callable[[str], None] | None = None) -> Timing:
    """Time `fn()` for `rounds` steady-state rounds after `warmup` untimed-in-stats rounds.

    Args:
        fn: the work; its result is discarded.
        warmup: rounds run first (their times are kept separately in Timing.warmup_ms).
        rounds: measured rounds (>= 1).
        device: a CUDA device (or "cuda") to time with CUDA events; None / CPU uses perf_counter.
        progress: optional callback receiving a short status line per round.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds={rounds} must be >= 1 and warmup={warmup} >= 0.")
    timer = _cuda_timer(device) if _is_cuda(device) else _cpu_timer
    warm = []
    for i in range(warmup):
        warm.append(timer(fn))
        if progress:
            progress(f"warm-up {i + 1}/{warmup}: {warm[-1]:.1f} ms")
    samples = []
    for i in range(rounds):
        samples.append(timer(fn))
        if progress:
            progress(f"round {i + 1}/{rounds}: {samples[-1]:.1f} ms")
    clock = "cuda_events" if _is_cuda(device) else "perf_counter"
    return Timing(tuple(samples), tuple(warm), clock)


def _is_cuda(device) -> bool:
    if device is None:
        return False
    return str(device).startswith("cuda")


def _cpu_timer(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _cuda_timer(device):
    import torch

    def timer(fn) -> float:
        torch.cuda.synchronize(device)  # nothing earlier leaks into this round
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return timer
