"""Deliberate faults for proving that guards catch broken optimizations (test-only).

Set FLUXPERF_FAULT to a comma-separated list of fault names; nothing here is active otherwise.
Known faults:
    skip_float8   quantize stage returns without converting any Linear layer (quantization silently skipped)

Example:
    FLUXPERF_FAULT=skip_float8 python -m pytest -m gpu -k "float8 and engagement"   # must FAIL
"""

from __future__ import annotations

import os

KNOWN = ("skip_float8",)


def active(name: str) -> bool:
    if name not in KNOWN:
        raise ValueError(f"unknown fault {name!r}; known: {KNOWN}")
    requested = {f.strip() for f in os.environ.get("FLUXPERF_FAULT", "").split(",") if f.strip()}
    unknown = requested - set(KNOWN)
    if unknown:
        raise ValueError(f"FLUXPERF_FAULT names unknown fault(s) {sorted(unknown)}; known: {KNOWN}")
    return name in requested
