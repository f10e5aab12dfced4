import sys
import types

import pytest

from fluxperf.errors import UnavailableError
from fluxperf.optional import PACKAGES, find_module, require


def test_missing_package_error_names_package_and_install_hint(monkeypatch):
    find_module.cache_clear()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    try:
        with pytest.raises(UnavailableError) as info:
            require("fa3")
    finally:
        find_module.cache_clear()
    msg = str(info.value)
    assert "FlashAttention-3" in msg and "fa3-fwd" in msg and "flash_attn_interface" in msg


def test_unknown_optional_name_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown optional package 'flash'"):
        require("flash")


def test_every_package_has_an_install_hint():
    for pkg in PACKAGES.values():
        assert pkg.install and pkg.modules



def test_hidden_packages_are_reported_missing_with_the_install_hint(hide_optional):
    from fluxperf.optional import probe

    hide_optional("torchao", "cache_dit")
    assert not probe("torchao") and not probe("cache_dit")  # whatever is installed is missing once hidden
    with pytest.raises(UnavailableError, match=r"^torchao is not available: .*Fix: pip install 'fluxperf\[torchao\]'"):
        require("torchao")
    with pytest.raises(UnavailableError, match=r"^cache-dit is not available: .*fluxperf\[cache-dit\]"):
        require("cache_dit")


def test_unknown_hidden_name_is_a_clear_error(monkeypatch):
    from fluxperf.optional import HIDE_ENV, hidden_packages

    monkeypatch.setenv(HIDE_ENV, "torchao, cachedit")
    with pytest.raises(KeyError, match="unknown optional package 'cachedit'; known: .*'cache_dit'"):
        hidden_packages()


HIDDEN_PROCESS = """
import importlib.util, json, sys
import conftest  # the root conftest hides the packages as pytest loads it
from fluxperf.optional import probe
out = {"find_spec": [importlib.util.find_spec(m) is None for m in ("torchao", "cache_dit")],
       "probe": [probe("torchao"), probe("cache_dit")], "header": conftest.pytest_report_header(None)}
for m in ("torchao", "torchao.quantization", "cache_dit"):
    try:
        __import__(m)
        out[m] = "imported"
    except ModuleNotFoundError as exc:
        out[m] = type(exc).__name__
import diffusers.utils
out["diffusers_sees_torchao"] = diffusers.utils.is_torchao_available()
print(json.dumps(out))
"""


def test_root_conftest_makes_hidden_packages_unimportable():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "FLUXPERF_HIDE_PACKAGES": "torchao,cache_dit"}
    out = subprocess.run([sys.executable, "-c", HIDDEN_PROCESS], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["find_spec"] == [True, True] and r["probe"] == [False, False]
    assert r["torchao"] == r["torchao.quantization"] == r["cache_dit"] == "ModuleNotFoundError"
    assert r["diffusers_sees_torchao"] is False
    assert "cache_dit, torchao" in r["header"]


def test_hiding_an_already_imported_module_is_refused(monkeypatch):
    from fluxperf import optional

    monkeypatch.setenv(optional.HIDE_ENV, "torchao")
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    try:
        with pytest.raises(RuntimeError, match="'torchao' was imported before it could be hidden"):
            optional.hide_modules()
    finally:
        optional.find_module.cache_clear()
