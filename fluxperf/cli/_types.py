"""argparse `type=` functions made from the library's field rules (fluxperf.recipe_checks).

A bad value makes argparse exit 2 with one line naming the option, the value, the rule and the fix, before any
model is built. The rules are the library's own (e.g. `LadderOptions`' fields), so the CLI and the library can
never disagree on what is valid.

Example:
    >>> steps = option_type(LadderOptions, "steps", int)  # doctest: +SKIP
    >>> steps("0")                                        # doctest: +SKIP
    argparse.ArgumentTypeError: '0' is not allowed: must be an integer in [1, 1000]. Fix: ...
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fluxperf.recipe_checks import Check, field_checks, value_problem

Problem = Callable[[Any], "str | None"]


def option_type(cls, name: str, parse: Callable[[str], Any] = str, extra: Problem | None = None):
    """The argparse type of dataclass `cls`'s field `name` (its annotation and `checked` rule; None not accepted).

    Args:
        parse: text -> value (int, float, a comma splitter...); a value it cannot parse is refused with the rule.
        extra: a further check (value -> None or "rule. Fix: ..."), e.g. whether a CUDA device is present.
    """
    accepted, check = field_checks(cls)[name]
    return _converter(name, parse, tuple(t for t in accepted if t is not type(None)), check, extra)


def value_type(parse: Callable[[str], Any], accepted: tuple, extra: Problem | None = None, **rule: Any):
    """An argparse type for an option without a library field: `accepted` types and a `Check(**rule)`."""
    return _converter(parse.__name__, parse, accepted, Check(**rule), extra)


def checkpoint_type(cls):
    """The argparse type of `--checkpoint` (every command): `cls.checkpoint`'s field rule, then
    fluxperf.model.build.checkpoint_problem (a local path must be a pipeline directory; else a hub id's form).
    Returns the text from_pretrained gets (a local path `~`-expanded: the checked path is the one loaded)."""

    def checkpoint(text: str) -> str:
        from fluxperf.model.build import normalize_checkpoint

        return normalize_checkpoint(text)

    def problem(value: str) -> str | None:
        from fluxperf.model.build import checkpoint_problem

        return checkpoint_problem(value)

    return option_type(cls, "checkpoint", checkpoint, extra=problem)


def comma_list(text: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c') (empty items dropped)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _converter(name: str, parse, accepted: tuple, check: Check, extra: Problem | None):
    def convert(text: str):
        try:
            value = parse(text)
        except (TypeError, ValueError):
            value = text  # refused below by the type rule, with the message every other bad value gets
        problem = value_problem(value, accepted, check)
        if problem:
            rule, fix = problem
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be {rule}. Fix: {fix}.")
        why = extra(value) if extra else None
        if why:
            raise argparse.ArgumentTypeError(f"{text!r}: {why}.")
        return value

    convert.__name__ = name  # argparse names the type in its own messages
    return convert
