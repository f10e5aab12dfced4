"""Per-field checks of the recipe's step configs (and of other option dataclasses such as the ladder's
LadderOptions), declared next to each field and checked generically.

Every field of a step config is declared with `checked(default, ...)`: its accepted TYPE comes from the field's
annotation (`bool`, `int`, `float`, `str`, `None`, `tuple[X, ...]` and unions of them, or a nested step config),
its VALUE rule (choices, numeric range, multiple, pattern, non-empty) from the `Check` stored in the field's metadata. `check_fields(config, section)`
walks every field and raises one `RecipeError` naming the field path, the value, the rule and the fix. A field
declared without `checked(...)` is a programming error raised at the first construction, so no field can be
added unchecked (tests/test_recipe_fields.py walks them all).

Type rules (stricter than Python's): a bool is not a number, a number is not a bool, a string is not a bool, an
int is accepted where a float is expected (0 -> 0.0 is harmless), non-finite floats are refused.

Example:
    >>> from fluxperf.recipe import Recipe
    >>> Recipe.from_dict({"compile": {"fullgraph": "no"}})  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    fluxperf.errors.RecipeError: compile.fullgraph='no' (str) is not allowed: must be a bool ...
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from fluxperf.errors import RecipeError

CHECK_KEY = "fluxperf_check"


@dataclass(frozen=True)
class Check:
    """The value rule of one field (its type comes from the annotation).

    Args:
        choices: the allowed values (None: any value of the annotated type).
            For a tuple field: the allowed elements.
        lo, hi: numeric bounds, inclusive unless `open_lo` / `open_hi` (None: unbounded).
        multiple: integers must be a multiple of it (e.g. 16 pixels).
        pattern: strings must fully match this regular expression (described by `fix`).
        nonempty: strings must contain a non-blank character; tuples at least one element.
        rule: the rule in words (the message's "must be ..." part); derived from the fields above when empty.
        fix: what to write instead (the message's "Fix:" part); derived from the rule when empty.
    """

    choices: tuple | None = None
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    multiple: int | None = None
    pattern: str | None = None
    nonempty: bool = False
    rule: str = ""
    fix: str = ""


def checked(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field with a default (or a default `factory`) and its value rule (keyword args of `Check`)."""
    meta = {CHECK_KEY: Check(**rule)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_checks(cls) -> dict[str, tuple[tuple, Check | None]]:
    """{field name: (accepted types from the annotation, Check or None)} of a step-config dataclass.

    Raises:
        TypeError: an annotation that this module cannot check (a programming error, named with the field).
    """
    return dict(_field_checks(cls))


@functools.cache
def _field_checks(cls) -> tuple:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out.append((f.name, (_accepted_types(cls, f.name, hints[f.name]), f.metadata.get(CHECK_KEY))))
    return tuple(out)


def _accepted_types(cls, name: str, annotation) -> tuple:
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    for a in args:
        if typing.get_origin(a) is tuple and typing.get_args(a)[1:] == (Ellipsis,):
            a = typing.get_args(a)[0]  # tuple[X, ...]: its elements must be checkable
        if not (a in (bool, int, float, str, type(None)) or dataclasses.is_dataclass(a)):
            raise TypeError(f"{cls.__name__}.{name}: annotation {annotation!r} cannot be checked by "
                            "fluxperf.recipe_checks. Fix: use bool, int, float, str, None (or a union) or a step config.")
    return tuple(args)


def check_fields(config, section: str = "", error: type[Exception] = RecipeError) -> None:
    """Check every field of `config` (a dataclass instance whose fields use `checked`) against its type and rule.

    Args:
        config: e.g. a CompileConfig.
        section: the path prefix in messages, e.g. "compile" (fields named "compile.fullgraph"); "" for the Recipe.
        error: the exception class raised (RecipeError for recipes).
    Raises:
        error: the first field whose value breaks its type or rule (path, value, rule, fix), one line.
        TypeError: a field declared without `checked(...)` (a programming error).
    """
    cls = type(config)
    for name, (accepted, check) in _field_checks(cls):
        if check is None:
            raise TypeError(f"{cls.__name__}.{name} has no check. Fix: declare it with "
                            "fluxperf.recipe_checks.checked(default, ...) so its type and range are validated.")
        problem = value_problem(getattr(config, name), accepted, check)
        if problem:
            path = f"{section}.{name}" if section else name
            rule, fix = problem
            value = getattr(config, name)
            raise error(f"{path}={value!r} ({type(value).__name__}) is not allowed: must be {rule}. Fix: {fix}.")


def value_problem(value, accepted: tuple, check: Check) -> tuple[str, str] | None:
    """None if `value` passes the types `accepted` (see field_checks) and `check`, else (rule text, fix text)."""
    fix = _fix(value, accepted, check)
    return None if fix is None else (_describe(accepted, check), check.fix or fix)


def _fix(value, accepted: tuple, check: Check) -> str | None:
    """None if `value` passes, else the derived fix (the rule's text is only built for a refusal). Hashable values
    are memoized by (type, value): a recipe has ~46 fields and sweeps (fluxperf.recipe_space: 44 160 recipes) repeat
    the same few values, so the checks cost ~6 µs per field the first time and a dict lookup afterwards."""
    try:
        hash(value)
    except TypeError:  # a dataclass section, a list: checked every time
        return _fix_uncached(value, accepted, check)
    return _fix_cached(type(value), value, accepted, check)


@functools.lru_cache(maxsize=8192)
def _fix_cached(_type: type, value, accepted: tuple, check: Check) -> str | None:
    # _type in the key: True == 1 and 1 == 1.0 hash alike, but their checks differ (bool is not an int field)
    return _fix_uncached(value, accepted, check)


def _fix_uncached(value, accepted: tuple, check: Check) -> str | None:
    if not any(_is_type(value, t) for t in accepted):
        return _type_fix(accepted, check)
    if value is None or dataclasses.is_dataclass(value):
        return None
    if isinstance(value, tuple):
        if check.nonempty and not value:
            return "give at least one value"
        bad = [v for v in value if check.choices is not None and v not in check.choices]
        return f"drop {bad}" if bad else None
    return _scalar_fix(value, check)


def _scalar_fix(value, check: Check) -> str | None:
    if check.choices is not None and value not in check.choices:
        return "use one of those values"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not _in_range(value, check):
            what = f"a multiple of {check.multiple}" if check.multiple else "a value"
            return f"use {what} in {_range_text(check)}"
        if check.multiple and value % check.multiple:
            return f"use a multiple of {check.multiple}, e.g. {max(check.multiple, round(value / check.multiple) * check.multiple)}"
    if isinstance(value, str):
        if check.nonempty and not value.strip():
            return "use a non-empty string"
        if check.pattern is not None and not re.fullmatch(check.pattern, value):
            return f"use a value matching {check.pattern!r}"
    return None


def _is_type(value, t) -> bool:
    simple = _SIMPLE.get(t)
    if simple is not None:
        return simple(value)
    if typing.get_origin(t) is tuple:
        return isinstance(value, tuple) and all(_is_type(v, typing.get_args(t)[0]) for v in value)
    return isinstance(value, t)


def _in_range(value: float, c: Check) -> bool:
    if c.lo is not None and (value < c.lo or (c.open_lo and value == c.lo)):
        return False
    return not (c.hi is not None and (value > c.hi or (c.open_hi and value == c.hi)))


_SIMPLE = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}
_TYPE_WORDS = {bool: "a bool (true/false)", int: "an integer", float: "a finite number", str: "a string",
               type(None): "None (null)"}


def _describe(accepted: tuple, c: Check) -> str:
    if c.rule:
        return c.rule
    if c.choices is not None and not any(typing.get_origin(t) is tuple for t in accepted):
        return f"one of {list(c.choices)}"
    return " or ".join(_describe_type(t, c) for t in accepted)


def _describe_type(t, c: Check) -> str:
    if typing.get_origin(t) is tuple:
        items = f"values from {list(c.choices)}" if c.choices is not None else _describe_type(typing.get_args(t)[0], c)
        return f"a {'non-empty ' if c.nonempty else ''}tuple of {items}"
    word = _TYPE_WORDS.get(t) or f"a {t.__name__}"
    if t in (int, float) and (c.lo is not None or c.hi is not None):
        word += f" in {_range_text(c)}"
    if t is int and c.multiple:
        word += f", a multiple of {c.multiple}"
    if t is str and c.nonempty:
        word = "a non-empty string"
    if t is str and c.pattern:
        word += f" matching {c.pattern!r}"
    return word


def _range_text(c: Check) -> str:
    lo = "-inf" if c.lo is None else _number(c.lo)
    hi = "inf" if c.hi is None else _number(c.hi)
    return f"{'(' if c.open_lo or c.lo is None else '['}{lo}, {hi}{')' if c.open_hi or c.hi is None else ']'}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _type_fix(accepted: tuple, c: Check) -> str:
    if accepted == (bool,):
        return "write true or false without quotes (JSON) / True or False (Python)"
    if any(dataclasses.is_dataclass(t) for t in accepted):
        return "pass the config object, or build from a dict with Recipe.from_dict"
    if float in accepted:
        return f"write a number without quotes, in {_range_text(c)}"
    if int in accepted:
        return f"write a whole number without quotes or decimals, in {_range_text(c)}"
    return f"use {_describe(accepted, c)}"
