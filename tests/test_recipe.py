"""Recipe validation and its error messages."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxperf.errors import RecipeError
from fluxperf.ladder import LADDER, recipe_from, rung, rung_names
from fluxperf.recipe import AttentionBackendName, Recipe


def test_defaults_are_bf16_and_nothing_enabled():
    r = Recipe()
    assert r.dtype == "bfloat16"
    assert not (r.fuse_qkv or r.channels_last or r.compile.enabled or r.export.enabled or r.quantize.enabled)
    assert r.attention.backend == "sdpa"


def test_round_trip_through_dict_for_every_rung():
    for name in rung_names():
        r = rung(name)
        assert Recipe.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    "data, words",
    [
        ({"dtype": "float64"}, ["dtype='float64'", "bfloat16"]),
        ({"compile": {"enabld": True}}, ["unknown recipe key", "enabld", "'compile'", "enabled"]),
        ({"colour": 1}, ["unknown recipe key", "colour"]),
        ({"compile": {"scope": "blocks"}}, ["compile.scope='blocks'", "regional"]),
        ({"attention": {"backend": "fa4"}}, ["attention.backend='fa4'", "fa3_fp8"]),
        ({"quantize": {"kind": "int4"}}, ["quantize.kind='int4'", "float8"]),
        ({"compile": {"enabled": "yes"}}, ["compile.enabled='yes'", "bool"]),
        ({"compile": True}, ["must be a dict"]),
        ({"cache_dit": {"residual_diff_threshold": -1}}, ["residual_diff_threshold=-1"]),
    ],
)
def test_bad_values_name_the_value_and_the_fix(data, words):
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(data)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"inductor_flags": {"enabled": True}}, ["inductor_flags.enabled=True", "compile", "Fix"]),
        ({"compile": {"enabled": True}, "export": {"enabled": True}}, ["replace", "compile.enabled=False"]),
        ({"export": {"enabled": True}, "cache_dit": {"enabled": True}}, ["export", "cache_dit", "Python"]),
        ({"export": {"enabled": True}, "first_block_cache": {"enabled": True}}, ["first_block_cache"]),
        ({"cache_dit": {"enabled": True}, "first_block_cache": {"enabled": True}}, ["only one"]),
        ({"compile": {"enabled": True, "mode": "reduce-overhead"}, "cache_dit": {"enabled": True}}, ["CUDA graphs"]),
        ({"dtype": "float32", "quantize": {"kind": "float8"}}, ["float8", "bfloat16"]),
        ({"dtype": "float32", "attention": {"backend": "fa3_fp8"}}, ["FlashAttention-3"]),
        ({"attention": {"backend": "sdpa", "fp8_scaling": "per_head"}}, ["fp8_scaling", "fa3_fp8"]),
        # TeaCache (fluxperf.steps.caching.teacache)
        ({"export": {"enabled": True}, "first_block_cache": {"enabled": True, "kind": "teacache"}},
         ["export.enabled=True with first_block_cache.enabled=True (kind='teacache')", "Fix"]),
        ({"compile": {"enabled": True}, "first_block_cache": {"enabled": True, "kind": "teacache"}},
         ["kind='teacache'", "TeaCache decides inside the head block", "compile.fullgraph=False"]),
        ({"compile": {"enabled": True, "fullgraph": False, "mode": "max-autotune"},
          "first_block_cache": {"enabled": True, "kind": "teacache"}}, ["CUDA graphs"]),
        ({"cache_dit": {"enabled": True}, "first_block_cache": {"enabled": True, "kind": "teacache"}}, ["only one"]),
    ],
)
def test_incompatible_combinations_are_refused(data, words):
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_nested_config_must_be_a_config_object():
    with pytest.raises(RecipeError, match="must be a CompileConfig"):
        Recipe(compile={"enabled": True})


def test_ladder_is_cumulative_and_in_flux_fast_order():
    assert LADDER == ("baseline", "bf16", "compile", "fused_qkv", "channels_last", "fa3_fp8", "float8",
                      "flags", "export")
    assert rung("baseline").dtype == "float32" and rung("bf16").dtype == "bfloat16"
    flags = rung("flags")
    assert flags.compile.enabled and flags.fuse_qkv and flags.channels_last and flags.quantize.kind == "float8"
    assert flags.attention.backend == "fa3_fp8" and flags.inductor_flags.enabled
    export = rung("export")
    assert export.export.enabled and not export.compile.enabled and export.inductor_flags.enabled


def test_flags_are_flux_fasts_four():
    assert rung("flags").inductor_flags.options() == {
        "conv_1x1_as_mm": True, "epilogue_fusion": False, "coordinate_descent_tuning": True,
        "coordinate_descent_check_all_directions": True}
    assert rung("float8").inductor_flags.options() == {}


def test_recipe_from_dict_with_base_and_unknown_rung():
    r = recipe_from({"base": "compile", "compile": {"mode": "max-autotune-no-cudagraphs"}})
    assert r.compile.enabled and r.compile.mode == "max-autotune-no-cudagraphs"
    with pytest.raises(RecipeError, match="unknown rung 'turbo'"):
        recipe_from("turbo")


@given(backend=st.sampled_from(AttentionBackendName.values()), fuse=st.booleans(), cl=st.booleans(),
       compile_on=st.booleans(), q=st.sampled_from(["none", "float8"]))
def test_valid_combinations_round_trip(backend, fuse, cl, compile_on, q):
    r = Recipe.from_dict({"attention": {"backend": backend}, "fuse_qkv": fuse, "channels_last": cl,
                          "compile": {"enabled": compile_on}, "quantize": {"kind": q}})
    assert Recipe.from_dict(r.to_dict()) == r
    assert r.replace(fuse_qkv=not fuse).fuse_qkv is (not fuse)
