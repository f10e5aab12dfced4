"""What a recipe needs (fluxperf.requirements) and the root conftest's recipe_marks: derived from the recipe, they
agree with what apply() refuses on this machine and with the marks the four hand lists used to give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from root_conftest import recipe_marks

from fluxperf.apply import apply
from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.ladder import rung, rung_names
from fluxperf.model.shapes import ShapeSpec
from fluxperf.requirements import FLOAT8_HARDWARE, HARDWARE, missing, requirements

ROOT = Path(__file__).resolve().parents[1]
NEED_MARKS = {"fa3", "torchao", "cache_dit", "aiter", "export"}  # the markers a recipe's needs can add (and gpu)

# -- the four hand lists as they stood before recipe_marks replaced them (commit 72c31d4) ---------------------------
PERF_LADDER_RUNGS = ("bf16", "compile", "fused_qkv", "channels_last", "fa3_fp8", "float8", "flags", "export")
OLD_LADDER_MARKS = {"fa3_fp8": {"fa3"}, "float8": {"torchao"}, "flags": {"fa3", "torchao"},
                    "export": {"fa3", "torchao", "export"}}  # perf/test_ladder.py::_EXTRA_MARKS
# The float8 rung builds on fa3_fp8 (its attention is fa3_fp8): the hand list forgot FA3 there, the derivation does not
# (tests/gpu/test_numerics_gpu.py::NEEDS had it right: "cumulative: float8 includes fa3_fp8").
CORRECTED = {"float8": {"fa3"}}
OLD_VARIANT_MARKS = {"uncached": set(), "cache_dit_f1b0": {"cache_dit"}, "fbcache": set()}  # perf/test_variants.py
OLD_NUMERICS_NEEDS = {"compile": [], "fused_qkv": [], "channels_last": [], "fa3_fp8": ["fa3"],
                      "float8": ["fa3", "torchao"]}  # tests/gpu/test_numerics_gpu.py::NEEDS
# rungs added since (issue 15): what each needs, written out here as the hand lists were
OLD_NUMERICS_NEEDS |= {"fp16": [], "fa2": [], "int8": ["torchao"], "compile_faithful": ["fa3", "torchao"],
                       "float8_only_row": ["torchao"], "float8_static": ["torchao"],
                       "float8_autotune": ["torchao"], "float8_graph": ["torchao"]}  # issue 17's float8 levers


def old_require_rung_needs(recipe) -> tuple[set[str], bool]:
    """perf/conftest.py::require_rung's hand list: (packages, needs sm90)."""
    needs = set()
    if recipe.attention.backend in ("fa3", "fa3_fp8"):
        needs.add("fa3")
    if recipe.quantize.enabled:
        needs.add("torchao")
    if recipe.cache_dit.enabled:
        needs.add("cache_dit")
    return needs, "fa3" in needs


def mark_names(name_or_recipe) -> set[str]:
    marks, reason = recipe_marks(name_or_recipe)
    assert reason is None, "without check=True no skip reason is computed"
    return {m.name for m in marks}


@pytest.mark.parametrize("name", PERF_LADDER_RUNGS)
def test_marks_match_the_old_perf_ladder_list(name):
    marks = mark_names(name)
    assert marks - {"gpu"} == OLD_LADDER_MARKS.get(name, set()) | CORRECTED.get(name, set())
    assert ("gpu" in marks) == (name in ("fa3_fp8", "float8", "flags", "export"))


def test_marks_match_the_old_variants_list():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fluxperf_perf_test_variants", ROOT / "perf" / "test_variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    assert {config: mark_names(recipe) for config, recipe in variants.DEV_CONFIGS.items()} == OLD_VARIANT_MARKS


@pytest.mark.parametrize("name", list(OLD_NUMERICS_NEEDS))
def test_packages_match_the_old_numerics_list(name):
    assert list(requirements(name).packages) == OLD_NUMERICS_NEEDS[name]


@pytest.mark.parametrize("name", rung_names())
def test_needs_match_the_old_require_rung(name):
    packages, sm90 = old_require_rung_needs(rung(name))
    reqs = requirements(name)
    assert set(reqs.packages) == packages
    assert ("sm90" in reqs.hardware) == sm90


@pytest.fixture(scope="module")
def collected_marks(gpu_tier_collection) -> dict[str, set[str]]:
    """node id -> its need markers, as pytest collects the real perf and GPU numerics tests (nothing runs; the
    root conftest's session-wide collection)."""
    return {node: marks & NEED_MARKS for node, (_, marks) in gpu_tier_collection.items()}


def test_collected_perf_and_numerics_tests_carry_the_old_marks(collected_marks):
    expected = {f"perf/test_ladder.py::test_transformer_step[{name}]":
                OLD_LADDER_MARKS.get(name, set()) | CORRECTED.get(name, set()) for name in PERF_LADDER_RUNGS}
    expected |= {f"perf/test_variants.py::test_dev_image[{c}]": marks for c, marks in OLD_VARIANT_MARKS.items()}
    assert {node: collected_marks[node] for node in expected} == expected
    numerics = {node: marks for node, marks in collected_marks.items() if "test_numerics_gpu" in node}
    assert numerics, "the GPU numerics tests were not collected"
    for node, marks in numerics.items():  # now marked by their rung's packages (fixture params), as the skips are
        name = node.split("[")[-1].rstrip("]")
        assert marks == set(OLD_NUMERICS_NEEDS[name]), node


# -- requirements against apply() on this machine --------------------------------------------------------------------
@pytest.fixture
def no_compile(monkeypatch):
    """The compile stage needs nothing and refuses nothing for lack of a package: skip its minutes on CPU."""
    monkeypatch.setattr("fluxperf.steps.compile.compile_transformer", lambda *a, **k: {"stubbed": True})
    monkeypatch.setattr("fluxperf.steps.compile.compile_vae_decoder", lambda *a, **k: {})


def refusal(pipe, name) -> UnavailableError | None:
    try:
        apply(pipe, name, spec=ShapeSpec("dev", 64, 64), num_inference_steps=28, variant="dev")
    except UnavailableError as exc:
        return exc
    return None


@pytest.mark.parametrize("hidden", [(), ("torchao", "cache_dit")], ids=["installed", "hidden"])
@pytest.mark.parametrize("name", rung_names())
def test_missing_is_what_apply_refuses_here(name, hidden, tiny_pipe_factory, no_compile, hide_optional):
    hide_optional(*hidden)
    lines = missing(name)
    refused = refusal(tiny_pipe_factory("dev", text_encoders=False), name)
    if refused is None:
        assert lines == [], f"apply() ran {name!r} here, but missing() says {lines}"
    else:
        assert lines, f"apply() refused {name!r} ({refused}) but missing() found nothing"
        assert any(refused.reason in line and refused.hint in line for line in lines), (refused, lines)
    for package in hidden:
        assert any(package.replace("_", "-") in line.lower() for line in lines) == (
            package in requirements(name).packages), (package, lines)


def test_float8_without_torchao_names_torchao_and_how_to_get_it(hide_optional):
    hide_optional("torchao")
    lines = [line for line in missing("float8_only") if "torchao is not available" in line]
    assert len(lines) == 1 and "pip install 'fluxperf[torchao]'" in lines[0] and "\n" not in lines[0]
    assert lines[0].startswith("quantize.kind='float8': ")
    assert requirements("float8_only").packages == ("torchao",), "requirements are static: hiding changes missing()"


def test_fa3_on_cpu_names_cuda_and_fa3():
    lines = missing("fa3_fp8", "cpu")
    assert len(lines) == 2, lines
    hardware, package = lines
    assert "runs on CUDA GPUs only" in hardware and "attention.backend='fa3_fp8'" in hardware
    assert "FlashAttention-3 is not available" in package and "pip install fa3-fwd" in package
    assert requirements("fa3_fp8").hardware == ("sm90",)


@pytest.mark.parametrize("backend, hardware, package", [
    ("sdpa", (), ()), ("cudnn", ("sm80",), ()), ("flash", ("sm80",), ()), ("fa3", ("sm90",), ("fa3",)),
    ("fa3_fp8", ("sm90",), ("fa3",)), ("aiter_fp8", ("rocm",), ("aiter",))])
def test_attention_needs_are_the_registrys(backend, hardware, package):
    reqs = requirements({"attention": {"backend": backend}})
    assert (reqs.hardware, reqs.packages) == (hardware, package)
    assert reqs.gpu == bool(hardware)


def test_a_backend_with_fallback_needs_nothing():
    recipe = {"attention": {"backend": "fa3_fp8", "fallback": "sdpa"}}
    assert requirements(recipe).needs == () and missing(recipe) == [] and mark_names(recipe) == set()


def test_stages_outside_the_plan_need_nothing():
    assert requirements({"cache_dit": {"enabled": False, "Fn": 0}}).needs == ()
    assert requirements("compile").needs == () and missing("compile") == []


def test_float8_hardware_floor_is_quantizes(monkeypatch):
    import torch

    from fluxperf.steps.quantize import check_float8_hardware

    floor = HARDWARE[FLOAT8_HARDWARE][1].capability
    below = (floor[0], floor[1] - 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: floor)
    check_float8_hardware(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: below)
    with pytest.raises(UnavailableError, match="< 8.9"):
        check_float8_hardware(torch.device("cuda"))


def test_installed_but_broken_package_is_missing_only_when_loaded(monkeypatch):
    from fluxperf import optional

    real = optional.find_module
    monkeypatch.setattr(optional, "find_module",
                        lambda name: "fluxperf_no_such_module" if name == "cache_dit" else real(name))
    recipe = {"base": "compile", "cache_dit": {"enabled": True}}
    (line,) = missing(recipe)
    assert "cache-dit is not available: module 'fluxperf_no_such_module' is present but failed to import" in line
    assert missing(recipe, load=False) == [], "load=False: installed counts as present (a test fails, never skips)"


def test_recipe_marks_skip_reason_only_when_asked():
    marks, reason = recipe_marks("fa3_fp8", check=True)
    assert {m.name for m in marks} == {"fa3", "gpu"}
    assert reason.startswith("recipe 'fa3_fp8' cannot run here: attention.backend='fa3_fp8': ")
    assert "FlashAttention-3" in reason and "CUDA" in reason
    assert recipe_marks("compile", check=True) == ([], None)


def test_unknown_rung_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown rung 'nope'"):
        requirements("nope")


def test_requirements_import_nothing_heavy():
    code = ("import sys; from fluxperf.requirements import requirements; r = requirements('export'); "
            "print(sorted(m for m in ('torch', 'torchao', 'cache_dit', 'diffusers') if m in sys.modules), r.gpu)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["[]", "True"], out.stdout + out.stderr
