"""Exception types. Every error names the value, the rule it broke and the fix."""

from __future__ import annotations


class FluxperfError(Exception):
    """Base class for all fluxperf errors."""


class RecipeError(FluxperfError, ValueError):
    """A recipe (or one of its step configs) is invalid or an incompatible combination."""


class UnavailableError(FluxperfError, RuntimeError):
    """An optional package or hardware feature that a step needs is missing.

    Args:
        what: the feature or package that is missing, e.g. "torchao".
        reason: why it is needed / what was found instead.
        hint: how to install or enable it.
    """

    def __init__(self, what: str, reason: str, hint: str):
        self.what, self.reason, self.hint = what, reason, hint
        super().__init__(f"{what} is not available: {reason}. Fix: {hint}")


class BaselineError(FluxperfError, RuntimeError):
    """A stored baseline is missing, corrupt or from different hardware."""
