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
    """The kept Inductor cache directory of a long build ($FLUXPERF_EXPORT_PACKAGES/inductor/<rung directory>, ~
    expanded), or None: a fresh cache (not a long build, or the variable unset / empty). The rung directory is the
    recipe's name when that is one plain path component, else a slug of it plus a hash (never shared, never outside).

    Raises:
        FluxperfError: the variable is blank, or names (or lies under) something that is not a directory.
    """
    root = environ.get(EXPORT_PACKAGES_ENV)
    if not root or not long_build(recipe):
        return None
    if not root.strip():
        raise FluxperfError(f"{EXPORT_PACKAGES_ENV}={root!r} is blank. Fix: a directory for the kept builds and "
                            "export packages, or set it empty to build cold.")
    root = os.path.expanduser(root)
    existing = root
    while existing and not os.path.exists(existing):  # the nearest existing ancestor must be a directory
        parent = os.path.dirname(existing.rstrip(os.sep))
        existing = parent if parent != existing else ""
    if existing and not os.path.isdir(existing):
        raise FluxperfError(f"{EXPORT_PACKAGES_ENV}={root!r}: {existing!r} is not a directory (the kept builds and "
                            f"export packages go under it). Fix: point it at a directory, or set it empty to build "
                            "cold.")
    return os.path.join(root, "inductor", rung_directory(recipe.name or "unnamed"))


def rung_directory(name: str) -> str:
    """A directory name for rung `name`: the name itself when it is one plain component (letters, digits, _ . -,
    not starting with a dot), else a slug of it and 8 hex digits of its SHA-1 (".", "..", "a/b" stay apart).

    Example:
        >>> rung_directory("compile_faithful"), rung_directory("..")[:3]
        ('compile_faithful', '__-')
    """
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40]
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


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
