"""Where a perf benchmark's Inductor build goes: a fresh cache (a cold compile, measured as compile_cold_s), or, for
the builds that take minutes, a kept one that survives a device command's time limit.

Long builds (`long_build`): the export rung (torch.export + AOTInductor: ≈ 16 min cold on the H200 with 24 cores,
perf/RESULTS.md "H200, session 3") and max-autotune compiles (compile_faithful: still compiling after 4 min on the
H200, "H200, session 4"). With $FLUXPERF_EXPORT_PACKAGES set (perf-tier.sh sets it, default
fluxperf-out/export-packages) each such rung keeps its Inductor and Triton caches in
`$FLUXPERF_EXPORT_PACKAGES/inductor/<rung name>/`: a build stopped by a time limit resumes from the kernels it already
built and tuned, and a benchmark whose rung directory already held files reports no compile_cold_s (it was not
cold: `resumed_build`). Inductor's cache keys hash the graph, so a changed model (an injected slowdown, new code)
never takes a stale kernel. One directory per rung keeps one rung's files from making another look resumed.
"""

from __future__ import annotations

import os

from fluxperf.errors import FluxperfError

EXPORT_PACKAGES_ENV = "FLUXPERF_EXPORT_PACKAGES"


def long_build(recipe) -> bool:
    """Whether `recipe` (fluxperf.recipe.Recipe) builds for minutes: export, or compile with a max-autotune mode."""
    compile_ = recipe.compile
    return bool(recipe.export.enabled or (compile_.enabled and (compile_.mode or "").startswith("max-autotune")))


def kept_build_dir(recipe, environ=os.environ) -> str | None:
    """The kept Inductor cache directory of a long build ($FLUXPERF_EXPORT_PACKAGES/inductor/<rung name>, ~ expanded),
    or None: a fresh cache (not a long build, or the variable unset / empty).

    Raises:
        FluxperfError: the variable names something that exists and is not a directory.
    """
    root = environ.get(EXPORT_PACKAGES_ENV)
    if not root or not long_build(recipe):
        return None
    root = os.path.expanduser(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise FluxperfError(f"{EXPORT_PACKAGES_ENV}={root!r} is not a directory (the kept builds and export packages "
                            f"go there). Fix: point it at a directory, or set it empty to build cold.")
    return os.path.join(root, "inductor", recipe.name or "unnamed")


def resumed_build(recipe, environ=os.environ) -> bool:
    """Whether the rung's kept cache already holds files before the benchmark (a resumed or repeated build)."""
    directory = kept_build_dir(recipe, environ)
    return bool(directory and os.path.isdir(directory) and os.listdir(directory))


def build_cache(recipe, environ=os.environ):
    """The context for the benchmark's build: fluxperf.bench.harness.kept_compile_cache(kept_build_dir) for a long
    build with the variable set, else fresh_compile_cache()."""
    from fluxperf.bench.harness import fresh_compile_cache, kept_compile_cache

    directory = kept_build_dir(recipe, environ)
    return kept_compile_cache(directory) if directory else fresh_compile_cache()
