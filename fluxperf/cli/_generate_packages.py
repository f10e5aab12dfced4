"""`fluxperf generate --use-cached-model`: what the export package cache holds for this run, hit or miss, and why.

Reads only manifests (fluxperf.steps.export.cache writes one per package, with every key field:
component, variant, shape_key, dtype, torch_version, gpu_name and the recipe / model / code hashes, plus the recipe,
inductor configs and code versions they were made from). Two moments:

* `survey_lines` (before building anything): per component, how many stored packages fit this GPU, torch, shape and
  dtype (the parts of the key known before the recipe's stages run) or, when none does, the closest one and how it
  differs, so the user knows up front that a build (minutes on a GPU) is coming.
* `outcome_lines` (after apply): the export stage's report (fluxperf.steps.export.apply.apply_export) says hit or
  miss per component; for a miss, the stored package nearest to the new one and which key parts differ (e.g.
  "torch '2.11.0+cu130' (here '2.13.0')", "code: diffusers 0.42.1 -> 0.43.0", "recipe: quantize").

Example:
    >>> outcome_lines({"cache": {"transformer": "hit"}, "packages": {"transformer": "/c/p.pt2"},
    ...                "load_s": {"transformer": 1.5}, "build_s": {"transformer": 0.0}, "cache_dir": "/c"})
    ['transformer: cache hit: reused /c/p.pt2 (loaded in 1.50 s)']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# key field -> how a message names it, in the order differences are listed
KEY_WORDS = {"variant": "variant", "shape_key": "shape", "dtype": "dtype", "torch_version": "torch",
             "gpu_name": "GPU", "recipe_hash": "recipe", "config_hash": "model", "code_hash": "code"}
LOCATION = ("variant", "shape_key", "dtype", "torch_version", "gpu_name")  # known before apply(); the rest after
_GRAPH_PARTS = ("dtype", "fuse_qkv", "channels_last", "attention", "quantize")  # cache.recipe_graph_parts' recipe keys


def stored_manifests(cache_dir: str | Path, component: str, *, exclude: Path | None = None) -> list[tuple[Path, dict]]:
    """(package directory, manifest) of every readable manifest of `component` in the cache (a broken one is
    skipped here: lookup() refuses it by name if it is ever the one asked for)."""
    root = Path(cache_dir) / component
    out = []
    for path in sorted(root.rglob("manifest.json")) if root.is_dir() else []:
        if exclude is not None and path.parent == exclude:
            continue
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(manifest, dict):
            out.append((path.parent, manifest))
    return out


def differences(current: dict[str, Any], stored: dict[str, Any], fields=tuple(KEY_WORDS)) -> list[str]:
    """The key parts of `stored` (a manifest) that differ from `current` (a manifest or a key dict), in words."""
    out = []
    for field in fields:
        if stored.get(field) == current.get(field):
            continue
        if field == "code_hash":
            out.append("code: " + _code_change(stored.get("code"), current.get("code")))
        elif field == "recipe_hash":
            out.append("recipe: " + _recipe_change(stored, current))
        elif field == "config_hash":
            out.append("model: another architecture, config, attention processors or parameter layout")
        else:
            out.append(f"{KEY_WORDS[field]} {stored.get(field)!r} (here {current.get(field)!r})")
    return out


def survey_lines(cache_dir: str, components: tuple[str, ...], where: dict[str, Any]) -> list[str]:
    """Before apply(): per component, the stored packages for this location (`where`: LOCATION fields' values)."""
    lines = []
    for component in components:
        stored = stored_manifests(cache_dir, component)
        here = [m for _, m in stored if not differences(where, m, LOCATION)]
        if here:
            lines.append(f"{component}: {len(here)} cached package(s) for this GPU, torch, shape and dtype in "
                         f"{cache_dir}; the recipe, model and code hashes decide at the export stage")
        elif stored:
            directory, manifest = min(stored, key=lambda dm: len(differences(where, dm[1], LOCATION)))
            lines.append(f"{component}: no cached package for this GPU, torch, shape and dtype ({len(stored)} for "
                         f"others; closest {directory} differs in: {'; '.join(differences(where, manifest, LOCATION))})"
                         "; it will be built (minutes on a GPU)")
        else:
            lines.append(f"{component}: no cached package in {cache_dir}; it will be built (minutes on a GPU)")
    return lines


def outcome_lines(report: dict[str, Any]) -> list[str]:
    """After apply(): hit or miss per component from the export stage's report, and for a miss why none matched."""
    lines = []
    for component, status in report["cache"].items():
        path = Path(report["packages"][component])
        if status == "hit":
            lines.append(f"{component}: cache hit: reused {path} (loaded in {report['load_s'][component]:.2f} s)")
            continue
        # the new package's manifest has every current key part plus what the hashes were made from
        new = _read(path.parent / "manifest.json") or report.get("keys", {}).get(component, {})
        others = stored_manifests(report["cache_dir"], component, exclude=path.parent)
        if others:
            directory, manifest = min(others, key=lambda dm: len(differences(new, dm[1])))
            why = f"closest cached package {directory} differs in: {'; '.join(differences(new, manifest))}"
        else:
            why = f"no other {component} package is stored in {report['cache_dir']}"
        lines.append(f"{component}: cache miss: built in {report['build_s'][component]:.1f} s -> {path} ({why})")
    return lines


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _code_change(stored: Any, current: Any) -> str:
    old = (stored or {}).get("versions", {}) if isinstance(stored, dict) else {}
    new = (current or {}).get("versions", {}) if isinstance(current, dict) else {}
    changed = [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changed) if changed else "the traced source changed (same versions)"


def _recipe_change(stored: dict, current: dict) -> str:
    old, new = stored.get("recipe") or {}, current.get("recipe") or {}
    changed = [k for k in _GRAPH_PARTS if old.get(k) != new.get(k)]
    if stored.get("inductor_configs") != current.get("inductor_configs"):
        changed.append("inductor_configs")
    return ", ".join(changed) if changed else "another graph-changing setting"
