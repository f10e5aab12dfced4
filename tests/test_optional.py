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

