"""`fluxperf generate --cache-dit-config FILE`: a YAML of cache-dit DBCache options -> the Recipe's cache_dit section.

The file uses cache-dit's own names (its `DBCacheConfig` fields, as cache-dit 1.5's `load_cache_config` reads them),
either flat or under a top-level `cache_config:` key:

    cache_config:
      Fn_compute_blocks: 1
      Bn_compute_blocks: 0
      residual_diff_threshold: 0.12
      max_warmup_steps: 8
      max_cached_steps: -1
      max_continuous_cached_steps: 2

Only the options fluxperf's cache_dit step sets (fluxperf.recipe.CacheDitConfig, mapped by
fluxperf.steps.caching.cache_dit.dbcache_config) are accepted; any other key (TaylorSeer, DBPrune, parallelism...) is
refused by name rather than ignored. `cache_type` may be given only as "DBCache"; `num_inference_steps` only equal
to --steps (the step count comes from --steps). Every value is checked by CacheDitConfig's field rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# cache-dit DBCacheConfig field -> fluxperf.recipe.CacheDitConfig field
YAML_KEYS = {
    "Fn_compute_blocks": "Fn",
    "Bn_compute_blocks": "Bn",
    "residual_diff_threshold": "residual_diff_threshold",
    "max_warmup_steps": "max_warmup_steps",
    "max_cached_steps": "max_cached_steps",
    "max_continuous_cached_steps": "max_continuous_cached_steps",
}
_CHECKED_ONLY = ("cache_type", "num_inference_steps")  # accepted when they agree with what fluxperf runs
OPTION = "--cache-dit-config"


def load_cache_dit_yaml(path: str, *, steps: int) -> dict[str, Any]:
    """Read `path` and return the Recipe's cache_dit section ({"enabled": True, "Fn": ..., ...}).

    Args:
        path: the YAML file.
        steps: the run's denoising steps (a `num_inference_steps` in the file must equal it).
    Raises:
        OptionError (fluxperf.measure.ladder_run): unreadable or non-UTF-8 file, bad YAML (with its line), a key
            given twice, not a mapping, an unknown or unsupported key, or a value out of its rule; one line naming
            the file, the key and the fix. Floats may be written 0.05 or 5e-2 (see _loader).
    """
    import yaml

    from fluxperf.errors import RecipeError
    from fluxperf.measure.ladder_run import OptionError
    from fluxperf.recipe import CacheDitConfig

    where = f"{OPTION} {path!r}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"{where}: cannot read it ({type(exc).__name__}: {exc.strerror or exc}). "
                          "Fix: give the path of a YAML file of DBCache options.") from None
    except UnicodeDecodeError as exc:  # a binary file, or UTF-16 (what some Windows editors save)
        raise OptionError(f"{where}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}). "
                          "Fix: save it as UTF-8 text with 'key: value' lines.") from None
    try:
        data = yaml.load(text, Loader=_loader())  # a SafeLoader: tags never construct Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        fix = "keep one of them" if problem.startswith("found duplicate key") else \
            "write 'key: value' lines, e.g. 'Fn_compute_blocks: 1'"
        raise OptionError(f"{where}: not valid YAML{at} ({problem}). Fix: {fix}.") from None
    data = _options(data, where, OptionError)
    section: dict[str, Any] = {"enabled": True}
    for key, value in data.items():
        if key == "cache_type" and value != "DBCache":
            raise OptionError(f"{where}: cache_type={value!r}: fluxperf runs cache-dit's DBCache only. "
                              "Fix: cache_type: DBCache, or leave it out.")
        if key == "num_inference_steps" and value != steps:
            raise OptionError(f"{where}: num_inference_steps={value!r} but --steps gives {steps}: the cache schedule "
                              "is built for the run's step count. Fix: leave num_inference_steps out (or --steps "
                              f"{value!r}).")
        if key in YAML_KEYS:
            section[YAML_KEYS[key]] = value
    try:
        CacheDitConfig(**section)
    except RecipeError as exc:
        message = str(exc)
        for yaml_key, field in YAML_KEYS.items():
            message = message.replace(f"cache_dit.{field}=", f"{yaml_key}=")
        raise OptionError(f"{where}: {message}") from None
    return section


_FLOAT_1_2 = r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""  # 5e-2, 1E3, 2.5e-1: floats in YAML 1.2


def _loader():
    """PyYAML's SafeLoader with two changes for option files:

    * a key given twice in one mapping is refused (yaml.constructor.ConstructorError naming the key and its line):
      PyYAML keeps the last one silently, so `Fn_compute_blocks: 1` then `Fn_compute_blocks: 2` would run Fn=2;
    * scientific notation without a dot (`5e-2`) is a float, as in YAML 1.2 (the YAML 1.1 rule PyYAML implements
      needs a dot, `5.0e-2`, and reads `5e-2` as the string '5e-2').
    """
    import re

    import yaml
    from yaml.constructor import ConstructorError

    class OptionLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, Any] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are overridden by design
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        first = seen.setdefault(key, key_node)
                    except TypeError:  # an unhashable key: SafeConstructor refuses it by name below
                        continue
                    if first is not key_node:
                        raise ConstructorError("while constructing a mapping", node.start_mark,
                                               f"found duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                                               key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    OptionLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT_1_2), list("-+0123456789"))
    return OptionLoader


def _options(data: Any, where: str, error: type[Exception]) -> dict[str, Any]:
    """The flat option mapping of the file (the `cache_config:` section if there is one); unknown keys refused."""
    if data is None:
        raise error(f"{where}: the file is empty. Fix: give DBCache options such as 'Fn_compute_blocks: 1', "
                    f"or drop {OPTION}.")
    if not isinstance(data, dict):
        raise error(f"{where}: the file holds a {type(data).__name__}, not a mapping of options. "
                    "Fix: write 'key: value' lines, e.g. 'Fn_compute_blocks: 1'.")
    if "cache_config" in data:
        others = sorted(str(k) for k in data if k != "cache_config")
        if others:
            raise error(f"{where}: top-level keys {others} next to cache_config: fluxperf takes cache-dit's "
                        f"cache options only. Fix: remove {others}.")
        data = data["cache_config"]
        if not isinstance(data, dict):
            raise error(f"{where}: cache_config holds a {type(data).__name__}, not a mapping of options. "
                        "Fix: indent 'key: value' lines under cache_config:.")
    known = [*YAML_KEYS, *_CHECKED_ONLY]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise error(f"{where}: unsupported key(s) {unknown}: fluxperf's cache_dit step sets only {known}. "
                    f"Fix: remove {unknown} (or use cache-dit directly for its other features).")
    return data
