"""The stage plan: each stage runs iff its own option asks for it, in one documented order.

flux-fast ran export only when cache-dit was enabled (an inverted, unrelated condition; its issue #18). Here the
expected plan is computed independently from the drawn options, so any stage predicate that looks at the
wrong option, or is inverted, fails.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from fluxperf.apply import STAGES, plan
from fluxperf.errors import RecipeError
from fluxperf.recipe import Recipe

ORDER = ["dtype", "fuse_qkv", "channels_last", "attention", "quantize", "cache_dit", "first_block_cache",
         "parallel", "compile", "export"]


def test_stage_order_is_the_documented_one():
    assert [s.name for s in STAGES] == ORDER


@settings(max_examples=300, deadline=None)
@given(fuse=st.booleans(), cl=st.booleans(), attn=st.sampled_from(["sdpa", "cudnn", "fa3", "fa3_fp8"]),
       q=st.booleans(), cache=st.sampled_from(["none", "cache_dit", "fbc"]), compiler=st.sampled_from(
           ["none", "compile", "export"]), flags=st.booleans())
def test_each_stage_runs_iff_its_own_option_is_set(fuse, cl, attn, q, cache, compiler, flags):
    data = {"fuse_qkv": fuse, "channels_last": cl, "attention": {"backend": attn},
            "quantize": {"kind": "float8" if q else "none"},
            "cache_dit": {"enabled": cache == "cache_dit"}, "first_block_cache": {"enabled": cache == "fbc"},
            "compile": {"enabled": compiler == "compile"}, "export": {"enabled": compiler == "export"},
            "inductor_flags": {"enabled": flags}}
    try:
        recipe = Recipe.from_dict(data)
    except RecipeError:
        return  # refused combinations are tested in test_recipe.py
    expected = ["dtype"]
    expected += ["fuse_qkv"] if fuse else []
    expected += ["channels_last"] if cl else []
    expected += ["attention"] if attn != "sdpa" else []
    expected += ["quantize"] if q else []
    expected += ["cache_dit"] if cache == "cache_dit" else []
    expected += ["first_block_cache"] if cache == "fbc" else []
    expected += ["compile"] if compiler == "compile" else []
    expected += ["export"] if compiler == "export" else []
    assert plan(recipe) == expected


def test_export_runs_without_cache_dit():
    """The exact flux-fast #18 case: export requested, cache-dit off -> export is planned."""
    recipe = Recipe.from_dict({"export": {"enabled": True}})
    assert "export" in plan(recipe) and "cache_dit" not in plan(recipe)
