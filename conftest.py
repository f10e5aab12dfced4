"""Root conftest: shared options and fixtures. Markers live in pyproject.toml (--strict-markers).

`pytest` runs the CPU tier (gpu deselected); `pytest -m gpu` the GPU numerics tier;
`pytest -m gpu --benchmark-compare` the benchmarks against baselines/<this GPU>/ (see perf/README.md).

Test-only: `FLUXPERF_HIDE_PACKAGES=torchao,cache_dit python -m pytest ...` runs the tests as if those optional
packages were not installed (fluxperf.optional.hide_modules: their imports fail, probes say missing), to check
that every test skips or asserts the missing-package message without them.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from fluxperf.optional import hidden_packages, hide_modules

# Before any test module (or plugin below) can import them.
HIDDEN_MODULES = hide_modules()

# The benchmark/baseline plugin (GPU fingerprint in machine info, per-GPU storage, decision rule).
if importlib.util.find_spec("fluxperf.bench.pytest_plugin") is not None:
    pytest_plugins = ["fluxperf.bench.pytest_plugin"]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if importlib.util.find_spec("hypothesis") is not None:
    from hypothesis import settings

    # CI machines are small and shared: time limits per example would make tests flaky, not stricter.
    settings.register_profile("fluxperf", deadline=None, print_blob=True)
    settings.load_profile("fluxperf")


def pytest_report_header(config):
    if HIDDEN_MODULES:
        return f"optional packages hidden (FLUXPERF_HIDE_PACKAGES): {', '.join(sorted(hidden_packages()))}"
    return None


def pytest_collection_modifyitems(config, items):
    """GPU tests skip (with the reason) on machines without CUDA, even when selected with -m gpu."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False on this machine)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def hide_optional(monkeypatch):
    """hide("torchao"): for this test, fluxperf's probes report the optional package missing (as without it
    installed: `require` raises UnavailableError with the install hint); restored afterwards."""
    from fluxperf import optional

    def hide(*names: str) -> None:
        monkeypatch.setenv(optional.HIDE_ENV, ",".join(sorted({*hidden_packages(), *names})))
        optional.find_module.cache_clear()

    yield hide
    monkeypatch.undo()
    optional.find_module.cache_clear()


@pytest.fixture(scope="session")
def tiny_schnell():
    """A tiny synthetic schnell pipeline in float32 on CPU (shared; do not mutate: use tiny_pipe_factory)."""
    from fluxperf.model.build import build_pipeline

    pipe = build_pipeline("schnell", "tiny", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipe_factory():
    """Build fresh tiny pipelines (for tests that apply recipes, which mutate the pipeline)."""
    from fluxperf.model.build import build_pipeline

    def make(variant="schnell", dtype="float32", **kw):
        pipe = build_pipeline(variant, "tiny", dtype=dtype, **kw)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture(scope="session")
def tiny_image_runner():
    """make(variant, steps) -> (pipe, run): a fresh tiny dev/Kontext pipeline (fp32, CPU) and run(steps=steps)
    returning its 64x64 image(s) as numpy from seeded prompt embeddings (and, for Kontext, a seeded input image).

    The embeddings follow the pipeline's dtype, so recipes that cast it (bf16) keep working.
    """
    import numpy as np
    import torch

    from fluxperf.model.build import build_pipeline
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import ShapeSpec, stand_in_prompt_embeds

    def make(variant: str, steps: int):
        pipe = build_pipeline(variant, "tiny", text_encoders=False, dtype="float32")
        pipe.set_progress_bar_config(disable=True)
        # 16 text tokens keep the tiny calls short; float32, cast to the pipeline's dtype at each call
        embeds = stand_in_prompt_embeds(ShapeSpec(variant, 64, 64, text_len=16), dims_of_pipeline(pipe), seed=0)
        extra = {}
        if variant == "kontext":
            from PIL import Image

            pixels = np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)
            extra = {"image": Image.fromarray(pixels), "max_area": 64 * 64, "_auto_resize": False}

        def run(n: int = steps) -> np.ndarray:
            dtype = pipe.transformer.dtype
            return pipe(height=64, width=64, num_inference_steps=n, guidance_scale=3.5, output_type="np",
                        generator=torch.Generator().manual_seed(0), **{k: v.to(dtype) for k, v in embeds.items()},
                        **extra).images

        return pipe, run

    return make


def recipe_marks(name_or_recipe, *, check: bool = False) -> tuple[list, str | None]:
    """The pytest marks of a rung name, dict or Recipe, and (with check=True) why it cannot run here.

    Marks (fluxperf.requirements.requirements): one per optional package it needs (fa3, torchao, cache_dit,
    aiter: the registered marker names are the package keys), gpu if a stage needs a GPU, export if the recipe
    exports. They are static: collecting them probes and imports nothing.

    Returns:
        (marks, skip_reason): skip_reason is None unless check=True and something is missing on this machine
        (fluxperf.requirements.missing with load=False: a package that is not installed or hardware that is not
        there is a skip; an installed build that fails to import is not, so it fails where it is used).
    Raises:
        RecipeError: an invalid recipe or unknown rung name.

    Test modules import it as `from root_conftest import recipe_marks` (see the alias below).
    """
    from fluxperf.apply import plan
    from fluxperf.ladder import recipe_from
    from fluxperf.requirements import missing, requirements

    recipe = recipe_from(name_or_recipe)
    needs = requirements(recipe)
    names = [*needs.packages, *(["gpu"] if needs.gpu else []), *(["export"] if "export" in plan(recipe) else [])]
    reason = None
    if check and (lines := missing(recipe, load=False)):
        reason = f"recipe {recipe.name!r} cannot run here: {'; '.join(lines)}"
    return [getattr(pytest.mark, name) for name in names], reason


@pytest.fixture
def eager_backend(monkeypatch):
    """Compile through apply() with dynamo's eager backend (the graphs, not Inductor: fast on CPU); dynamo's caches
    are reset before and after."""
    import torch

    from fluxperf.steps import compile as fcompile

    real = fcompile.compile_options
    monkeypatch.setattr(fcompile, "compile_options", lambda cfg, flags: {**real(cfg, flags), "backend": "eager"})
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def no_model_build(monkeypatch):
    """Any model build, ladder run or live profile fails the test: a refusal of bad input must come before them."""

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the bad value was refused")

    for target in ("fluxperf.model.build.build_pipeline", "fluxperf.measure.ladder_run.run_ladder",
                   "fluxperf.cli.profile._profile_rung"):
        monkeypatch.setattr(target, built)


def block_cache_fixtures(steps: int):
    """The `tiny` and `clean` fixtures of the block-cache test modules (cache-dit, first-block cache, TeaCache):
    `tiny` = (variant, pipe, run, uncached image) of a tiny dev / Kontext pipeline at `steps` steps (module scope,
    both variants); `clean` yields it and disables whatever block cache the test left on (cache-dit patches the
    pipeline class). Usage in a test module: `tiny, clean = block_cache_fixtures(STEPS)`."""

    @pytest.fixture(scope="module", params=["dev", "kontext"])
    def tiny(request, tiny_image_runner):
        pipe, run = tiny_image_runner(request.param, steps)
        return request.param, pipe, run, run()

    @pytest.fixture
    def clean(tiny):
        from fluxperf.steps.caching.stats import disable_active_cache

        yield tiny
        disable_active_cache(tiny[1])

    return tiny, clean


class FastMachineInfo:
    """pytester plugin: skip py-cpuinfo (slow) in pytest-benchmark's machine info."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_benchmark_generate_machine_info(self):
        return {"node": "test", "machine": "x86_64"}


def run_in_process(pytester, *args):
    """An in-process pytest run for plugin tests (no cache provider, fast machine info)."""
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args, plugins=[FastMachineInfo()])


_COLLECTION_DUMP = """
def pytest_collection_finish(session):
    for item in session.items:
        group = item.get_closest_marker("perf_group")
        print("ITEM", item.nodeid, group.args[0] if group and group.args else "-",
              ",".join(sorted({m.name for m in item.iter_markers()})))
"""


@pytest.fixture(scope="session")
def gpu_tier_collection(tmp_path_factory) -> dict[str, tuple[str, set[str]]]:
    """nodeid -> (its perf_group marker or "-", the names of all its markers), from ONE `pytest --co -m gpu` of the
    perf tier and the GPU numerics tests in a subprocess (CPU; nothing runs): the collection costs ~7 s, shared by
    tests/test_perf_groups.py and tests/test_requirements.py."""
    import subprocess

    plugin_dir = tmp_path_factory.mktemp("collection-dump")
    (plugin_dir / "fluxperf_collection_dump.py").write_text(_COLLECTION_DUMP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    root = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "-p",
                           "fluxperf_collection_dump", "-m", "gpu", "perf", "tests/gpu/test_numerics_gpu.py"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("ITEM "):
            _, node, group, names = line.split(" ")
            out[node] = (group, set(names.split(",")) - {""})
    return out


# Every conftest.py outside a package is imported as "conftest", and pytest drops the previous one from sys.modules
# before it loads the next (perf/, tests/gpu/): `import conftest` in a test module gets whichever came last. This
# name stays this file's.
sys.modules["root_conftest"] = sys.modules[__name__]
