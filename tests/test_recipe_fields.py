"""Every field of every step config is type- and range-checked (issue 13, item 11).

The rules live next to each field (fluxperf.recipe_checks.checked); these tests pin the config surface (a new field
must be added here deliberately, with a check) and throw wrong-typed values at every field.
"""

import dataclasses
import math
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxperf.errors import RecipeError
from fluxperf.ladder import recipe_from
from fluxperf.recipe import Recipe

SECTIONS = {f.name: f.type for f in dataclasses.fields(Recipe) if dataclasses.is_dataclass(getattr(Recipe(), f.name))}

# The whole config surface. Adding a field means adding it here, with its check in fluxperf/recipe.py.
SURFACE = {
    "": {"name", "dtype", "fuse_qkv", "channels_last", *SECTIONS},
    "attention": {"backend", "fp8_scaling", "fallback"},
    "quantize": {"kind", "granularity", "activation_scale", "calibration_calls"},
    "inductor_flags": {"enabled", "conv_1x1_as_mm", "epilogue_fusion", "coordinate_descent_tuning",
                       "coordinate_descent_check_all_directions"},
    "compile": {"enabled", "scope", "mode", "fullgraph", "dynamic", "vae", "cuda_graph"},
    "export": {"enabled", "cudagraphs", "vae", "cache_dir"},
    "cache_dit": {"enabled", "Fn", "Bn", "residual_diff_threshold", "max_warmup_steps", "max_cached_steps",
                  "max_continuous_cached_steps"},
    "first_block_cache": {"enabled", "kind", "threshold"},
    "parallel": {"enabled", "ulysses_degree", "ring_degree", "attention"},
}


def _config_classes():
    yield "", Recipe
    for name in SECTIONS:
        yield name, type(getattr(Recipe(), name))


def _all_fields():
    return [(section, f.name) for section, cls in _config_classes() for f in dataclasses.fields(cls)
            if not (section == "" and f.name in SECTIONS)]


def _data(section: str, name: str, value) -> dict:
    return {section: {name: value}} if section else {name: value}


@pytest.mark.parametrize(
    "data, path, rule",
    [
        ({"base": "compile", "compile": {"fullgraph": "no"}}, "compile.fullgraph='no'", "a bool"),
        ({"compile": {"dynamic": "yes"}}, "compile.dynamic='yes'", "a bool"),
        ({"compile": {"vae": 0}}, "compile.vae=0", "a bool"),
        ({"export": {"vae": "false"}}, "export.vae='false'", "a bool"),
        ({"export": {"cache_dir": 123}}, "export.cache_dir=123", "a non-empty string or None"),
        ({"export": {"cache_dir": ""}}, "export.cache_dir=''", "a non-empty string or None"),
        ({"cache_dit": {"max_cached_steps": "many"}}, "cache_dit.max_cached_steps='many'", "an integer in [-1"),
        ({"cache_dit": {"max_continuous_cached_steps": -5}}, "cache_dit.max_continuous_cached_steps=-5",
         "an integer in [-1"),
        ({"cache_dit": {"residual_diff_threshold": True}}, "cache_dit.residual_diff_threshold=True", "a finite number"),
        ({"cache_dit": {"Fn": 1.5}}, "cache_dit.Fn=1.5", "an integer in [0, 57]"),
        ({"first_block_cache": {"threshold": True}}, "first_block_cache.threshold=True", "a finite number in (0, 5)"),
        ({"first_block_cache": {"threshold": float("nan")}}, "first_block_cache.threshold=nan", "a finite number"),
        ({"name": 5}, "name=5", "a non-empty string"),
        ({"name": ""}, "name=''", "a non-empty string"),
        ({"name": "  "}, "name='  '", "a non-empty string"),
        ({"inductor_flags": {"epilogue_fusion": 1}}, "inductor_flags.epilogue_fusion=1", "a bool"),
        ({"compile": {"mode": 3}}, "compile.mode=3", "one of [None, 'default'"),
    ],
)
def test_wrong_type_or_range_is_refused_naming_path_value_rule_and_fix(data, path, rule):
    with pytest.raises(RecipeError) as info:
        recipe_from(data)
    msg = str(info.value)
    assert path in msg and f"must be {rule}" in msg and "Fix: " in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("data", [
    {"cache_dit": {"max_cached_steps": -1, "max_continuous_cached_steps": 0, "residual_diff_threshold": 1}},
    {"first_block_cache": {"threshold": 0.25}}, {"export": {"cache_dir": "/tmp/aoti"}}, {"name": "my_recipe"},
    {"compile": {"mode": None, "dynamic": True, "vae": False}},
])
def test_valid_values_still_pass(data):
    r = Recipe.from_dict(data)
    for section, values in data.items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            assert (getattr(getattr(r, section), key) if key else getattr(r, section)) == value


def test_the_config_surface_is_pinned_and_every_field_has_a_check():
    from fluxperf.recipe_checks import field_checks

    seen = {section: set() for section, _ in _config_classes()}
    for section, cls in _config_classes():
        for name, (types, check) in field_checks(cls).items():
            seen[section].add(name)
            where = f"{section or 'Recipe'}.{name}"
            assert check is not None, f"{where} has no check"
            assert types, where
            if types == (bool,) or any(dataclasses.is_dataclass(t) for t in types):
                continue  # the type is the whole rule
            # every other field needs a value rule: choices, a numeric range or a non-empty string
            numeric = int in types or float in types
            assert check.choices is not None or (numeric and check.lo is not None and check.hi is not None) \
                or (str in types and check.nonempty), f"{where}: type {types} without a value rule"
    assert seen == SURFACE


def test_a_field_without_a_check_or_with_an_uncheckable_type_is_a_programming_error():
    from fluxperf.recipe_checks import check_fields, checked

    @dataclasses.dataclass(frozen=True)
    class Unchecked:
        ok: bool = checked(True)
        new_knob: int = 3

    with pytest.raises(TypeError, match="Unchecked.new_knob has no check"):
        check_fields(Unchecked(), "section")

    @dataclasses.dataclass(frozen=True)
    class Uncheckable:
        items: list = checked(None)

    with pytest.raises(TypeError, match="Uncheckable.items: annotation"):
        check_fields(Uncheckable(), "section")


def _accepted_types(section: str, name: str) -> tuple:
    cls = Recipe if not section else type(getattr(Recipe(), section))
    hint = typing.get_type_hints(cls)[name]
    return typing.get_args(hint) or (hint,)


def _type_ok(value, types: tuple) -> bool:
    checks = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              str: lambda v: isinstance(v, str), type(None): lambda v: v is None}
    return any(checks[t](value) for t in types)


ANY_VALUE = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                      st.text(max_size=12), st.none(), st.lists(st.integers(), max_size=3),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@given(field=st.sampled_from(_all_fields()), value=ANY_VALUE)
def test_any_value_is_either_refused_with_recipe_error_or_kept_as_given(field, value):
    section, name = field
    try:
        r = Recipe.from_dict(_data(section, name, value))
    except RecipeError:
        return
    assert _type_ok(value, _accepted_types(section, name)), f"{section}.{name}={value!r} accepted"
    kept = getattr(getattr(r, section), name) if section else getattr(r, name)
    assert kept == value and type(kept) is type(value)


@given(field=st.sampled_from(_all_fields()), value=ANY_VALUE)
def test_wrong_typed_values_are_always_refused(field, value):
    section, name = field
    if _type_ok(value, _accepted_types(section, name)):
        return
    with pytest.raises(RecipeError, match=rf"^{section + '.' if section else ''}{name}="):
        Recipe.from_dict(_data(section, name, value))


def test_step_configs_built_directly_are_checked_too():
    from fluxperf.recipe import CacheDitConfig, CompileConfig

    with pytest.raises(RecipeError, match=r"^compile\.fullgraph='no' \(str\)"):
        CompileConfig(enabled=True, fullgraph="no")
    with pytest.raises(RecipeError, match=r"^cache_dit\.max_cached_steps='many'"):
        CacheDitConfig(enabled=True, max_cached_steps="many")
