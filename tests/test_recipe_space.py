"""The whole recipe space (issue 13, item 9): every combination a user can write is either accepted by
`Recipe.validate` and then runs close to eager (or is refused at apply() for missing hardware/packages only), or is
refused by `Recipe.validate` with one line naming the combination and the fix.

On CPU the compiler runs with dynamo's "eager" backend (`cheap_compile`): graph capture, fullgraph and guards are
real (that is where cache hooks and compile modes conflict), Inductor's code generation is skipped (the compile
mode and inductor options are still built and checked by fluxperf.steps.compile.compile_options, for every accepted
combination). The CUDA-only part runs in tests/gpu/test_recipe_space_gpu.py.
"""

import re
from collections import Counter

import numpy as np
import pytest
import torch

from fluxperf.apply import apply
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.ladder import recipe_from
from fluxperf.recipe import Recipe
from fluxperf.recipe_space import AXES, combinations, judge
from fluxperf.steps.caching.stats import disable_active_cache
from fluxperf.steps.compile import compile_options

STEPS = 10  # > cache-dit's 8 warm-up steps, so its cache decisions run
FIELD_PATHS = {f"{s}.{n}" for s, sub in Recipe().to_dict().items() if isinstance(sub, dict) for n in sub} | \
    {k for k, v in Recipe().to_dict().items() if not isinstance(v, dict)}


@pytest.fixture(scope="module")
def space():
    """[(labels, data, Recipe or RecipeError)] for every combination of fluxperf.recipe_space.AXES."""
    return [(labels, data, judge(data)) for labels, data in combinations()]


def test_every_combination_is_accepted_or_refused_with_one_line_naming_it(space):
    outcomes = Counter(isinstance(v, Recipe) for _, _, v in space)
    assert len(space) == np.prod([len(v) for v in AXES.values()]) and outcomes[True] and outcomes[False]
    for _, data, verdict in space:
        if isinstance(verdict, Recipe):
            assert verdict.name == data["name"]
            continue
        msg = str(verdict)
        named = set(re.findall(r"\b([a-z_0-9]+(?:\.[A-Za-z_0-9]+)?)=", msg))
        assert "\n" not in msg and "Fix: " in msg, (data["name"], msg)
        assert len(named & FIELD_PATHS) >= 2, f"{data['name']}: the refusal must name the combination: {msg}"


@pytest.mark.parametrize("axis_values, words", [
    ({"cache": "fbc", "compiler": "compile/.*/fullgraph"}, ["first_block_cache.enabled=True", "compile.fullgraph=True",
                                                          "Fix: compile.fullgraph=False"]),
    ({"cache": "cache_dit", "compiler": "compile/whole/.*/fullgraph"}, ["cache_dit.enabled=True",
                                                                      "compile.scope='whole'", "regional"]),
    ({"cache": "teacache", "compiler": "compile/.*/fullgraph"}, ["kind='teacache'", "compile.fullgraph=True",
                                                               "Fix: compile.fullgraph=False"]),
    ({"dtype": "float32", "attn": "cudnn"}, ["attention.backend='cudnn' with dtype='float32'", "bfloat16"]),
    ({"dtype": "float32", "attn": "flash"}, ["attention.backend='flash' with dtype='float32'", "bfloat16"]),
])
def test_combinations_that_crash_at_the_first_call_are_refused_by_validate(space, axis_values, words):
    """Each class failed at apply() or at the first pipeline call before validate knew it (found on this space)."""
    def matches(labels):
        return all(re.fullmatch(pattern, labels[axis]) for axis, pattern in axis_values.items())

    hits = [(data, v) for labels, data, v in space if matches(labels)]
    assert hits
    for data, verdict in hits:
        if isinstance(verdict, RecipeError) and not all(w in str(verdict) for w in words):
            continue  # refused by another rule first (e.g. export with a cache): still refused
        assert isinstance(verdict, RecipeError), f"{data['name']} accepted"
    assert any(isinstance(v, RecipeError) and all(w in str(v) for w in words) for _, v in hits)


@pytest.mark.parametrize("scope", ["regional", "whole"])
@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_tree_modes_are_refused_with_the_measured_reason(mode, scope):
    """On the H200 these failed (regional: CUDAGraphs output overwritten) or gave a 21 % wrong image (whole)."""
    with pytest.raises(RecipeError, match=rf"compile.mode='{mode}' with compile.scope='{scope}'.*Fix: compile.mode="
                                          "'max-autotune-no-cudagraphs'"):
        recipe_from({"dtype": "bfloat16", "compile": {"enabled": True, "mode": mode, "scope": scope}, "name": "x"})


def test_compile_mode_and_inductor_flags_that_disagree_are_refused_by_validate():
    with pytest.raises(RecipeError, match=r"compile.mode='max-autotune' sets .*coordinate_descent_tuning.*Fix"):
        recipe_from({"base": "flags", "compile": {"mode": "max-autotune"},
                     "inductor_flags": {"coordinate_descent_tuning": False}})


def test_every_accepted_compile_mode_builds_its_torch_compile_options(space):
    seen = set()
    for _, _, r in space:
        if isinstance(r, Recipe) and r.compile.enabled:
            key = (r.compile, tuple(sorted(r.inductor_flags.options().items())))
            if key not in seen:
                seen.add(key)
                compile_options(r.compile, r.inductor_flags.options())  # raises on a mode/flags conflict
    assert len(seen) >= 20


@pytest.fixture
def cheap_compile(monkeypatch):
    """torch.compile with dynamo's eager backend (mode/options dropped: Inductor is not run); counts the calls."""
    real = torch.compile
    calls = []

    def compile_eager(model=None, *, fullgraph=False, dynamic=None, backend="inductor", mode=None, options=None,
                      disable=False):
        calls.append({"fullgraph": fullgraph, "dynamic": dynamic, "mode": mode, "options": options})
        return real(model, fullgraph=fullgraph, dynamic=dynamic, backend="eager", disable=disable)

    monkeypatch.setattr(torch, "compile", compile_eager)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def eager_image(tiny_image_runner):
    _, run = tiny_image_runner("dev", STEPS)
    return run()


def _cpu_part():
    """The accepted combinations that only need a CPU, projected on what matters with the eager backend
    (float32, SDPA, no float8, no export; the compile mode and inductor flags are checked by compile_options)."""
    axes = {**AXES, "dtype": AXES["dtype"][:1], "attn": AXES["attn"][:1], "quant": AXES["quant"][:1],
            "flags": AXES["flags"][:1],
            "compiler": tuple(v for v in AXES["compiler"] if v[0] == "eager" or "/none/" in v[0])}
    return [data for _, data in combinations(axes) if isinstance(judge(data), Recipe)]


CPU_PART = _cpu_part()
FAST = {"float32|compiler=eager|qkv=fused|attn=sdpa|quant=none|flags=off|cache=cache_dit",
        "float32|compiler=compile/regional/none/breaks|qkv=unfused|attn=sdpa|quant=none|flags=off|cache=fbc",
        "float32|compiler=compile/regional/none/fullgraph|qkv=fused|attn=sdpa|quant=none|flags=off|cache=none"}


def _fast(data) -> bool:
    """Eager combinations (< 1 s) and three compiled representatives run without the slow mark."""
    return data["name"] in FAST or "compiler=eager" in data["name"]


def _part(name: str, axis: str) -> str:
    return name.split(f"{axis}=")[1].split("|")[0]


def _covering(part: list[dict]) -> set[str]:
    """The compiled combinations run by default: every (compiler, cache) pair once, its QKV setting alternating
    over the pairs (so each compiler runs fused and unfused where it has two pairs), FAST always; the other half
    of the cross product is marked `exhaustive` (pytest -m exhaustive). Measured: the full product cost CI ~90 s."""
    chosen = {d["name"] for d in part if d["name"] in FAST}
    covered = {(_part(n, "compiler"), _part(n, "cache")) for n in chosen}
    pairs = sorted({(_part(d["name"], "compiler"), _part(d["name"], "cache")) for d in part
                    if "compiler=eager" not in d["name"]} - covered)
    for i, pair in enumerate(pairs):
        want = ("fused", "unfused")[i % 2]
        options = [d["name"] for d in part if (_part(d["name"], "compiler"), _part(d["name"], "cache")) == pair]
        chosen.add(next((n for n in options if _part(n, "qkv") == want), options[0]))
    return chosen


COVERING = _covering(CPU_PART)


def _marks(data) -> tuple:
    if _fast(data):
        return ()
    return (pytest.mark.slow,) if data["name"] in COVERING else (pytest.mark.slow, pytest.mark.exhaustive)


@pytest.mark.parametrize("data", [pytest.param(d, id=d["name"], marks=_marks(d))
                                  for d in CPU_PART])
def test_accepted_cpu_combinations_run_close_to_eager(data, tiny_image_runner, eager_image, cheap_compile):
    recipe = Recipe.from_dict(data)
    pipe, run = tiny_image_runner("dev", STEPS)
    try:
        stack = apply(pipe, recipe, num_inference_steps=STEPS, variant="dev")
        image = run()
    finally:
        disable_active_cache(pipe)
    assert (stack.compile is not None) == recipe.compile.enabled == bool(cheap_compile)
    assert all(c["fullgraph"] == recipe.compile.fullgraph for c in cheap_compile)
    # fp32: fused QKV only reorders sums; a cache may serve a late step from its residuals (tiny random model)
    atol = 0.05 if (recipe.cache_dit.enabled or recipe.first_block_cache.enabled) else 1e-4
    assert image.shape == eager_image.shape and np.isfinite(image).all()
    assert np.abs(image - eager_image).max() <= atol, (data["name"], np.abs(image - eager_image).max())


def test_the_cpu_part_covers_every_compile_scope_fullgraph_and_cache():
    names = {d["name"] for d in CPU_PART}
    assert FAST <= names
    # what runs by default covers every compiled (compiler, cache) pair and both QKV settings
    compiled = {n for n in names if "compiler=eager" not in n}
    assert {(_part(n, "compiler"), _part(n, "cache")) for n in compiled} == \
        {(_part(n, "compiler"), _part(n, "cache")) for n in COVERING & compiled}
    assert {_part(n, "qkv") for n in COVERING & compiled} == {"fused", "unfused"}
    for scope in ("regional", "whole"):
        for cache in ("none", "cache_dit", "fbc", "teacache"):
            assert any(f"compile/{scope}/" in n and n.endswith(f"cache={cache}") for n in names), (scope, cache)


GPU_ONLY = [
    ({"attention": {"backend": b}}, ["CUDA", "Fix"]) for b in ("cudnn", "flash", "fa3", "fa3_fp8")
] + [
    ({"attention": {"backend": "aiter_fp8"}}, ["aiter", "Fix"]),
    ({"quantize": {"kind": "float8", "granularity": "tensor"}}, ["Fix"]),
    ({"quantize": {"kind": "float8", "granularity": "row"}}, ["Fix"]),
    ({"export": {"enabled": True}}, ["CUDA", "Fix"]),
]


@pytest.mark.parametrize("data, words", GPU_ONLY, ids=[str(d) for d, _ in GPU_ONLY])
def test_accepted_gpu_only_combinations_are_refused_on_cpu_for_the_hardware(data, words, tiny_pipe_factory):
    """On a CPU the CUDA-only part cannot run: apply() refuses it (hardware or package), never another error."""
    from fluxperf.model.shapes import ShapeSpec

    pipe = tiny_pipe_factory("dev", dtype="bfloat16")
    with pytest.raises(UnavailableError) as info:
        apply(pipe, Recipe.from_dict({"dtype": "bfloat16", **data}), spec=ShapeSpec("dev", 64, 64),
              num_inference_steps=STEPS, variant="dev")
    assert all(w in str(info.value) for w in words), str(info.value)


def test_gpu_only_attention_with_sdpa_fallback_runs_close_to_eager_on_cpu(tiny_image_runner):
    with pytest.raises(RecipeError, match="attention.backend='cudnn' with dtype='float32'"):
        Recipe.from_dict({"dtype": "float32", "attention": {"backend": "cudnn", "fallback": "sdpa"}})
    pipe, run = tiny_image_runner("dev", STEPS)
    apply(pipe, {"dtype": "bfloat16"}, variant="dev")
    eager_bf16 = run(2)  # bf16 is slow on CPU: 2 steps show the same processor path
    pipe, run = tiny_image_runner("dev", STEPS)
    stack = apply(pipe, {"dtype": "bfloat16", "attention": {"backend": "cudnn", "fallback": "sdpa"}}, variant="dev")
    report = stack.step("attention")
    assert report["requested"] == "cudnn" and report["backend"] == "sdpa" and "CUDA" in report["fallback_reason"]
    image = run(2)
    assert np.isfinite(image).all() and np.abs(image - eager_bf16).max() < 0.02, np.abs(image - eager_bf16).max()
