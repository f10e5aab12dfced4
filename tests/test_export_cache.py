"""Export package cache: keys (every graph-changing part), manifests, refusal of foreign packages, atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from fluxperf import export_cache as ec
from fluxperf.errors import FluxperfError
from fluxperf.ladder import rung
from fluxperf.models import build_pipeline
from fluxperf.shapes import ShapeSpec

# -- cache keys and manifests ----------------------------------------------------------------------------
SPEC = ShapeSpec("schnell", 512, 512)
FP = {"class": "FluxTransformer2DModel", "config": {"num_layers": 19}}
CODE = {"versions": {"torch": "2.11.0+cu130", "diffusers": "0.42.1", "torchao": "0.18.0", "fluxperf": "0.1.0",
                     "fa3": "fa3-fwd 0.0.3 (fa3_fwd_interface)", "triton": "3.5.0"}, "source": "0123456789abcdef"}


def _key(recipe=None, fp=FP, spec=SPEC, code=CODE, **kw):
    recipe = recipe or rung("export")
    parts = ec.recipe_graph_parts(recipe, {**recipe.inductor_flags.options(), "x": 1})
    kw = {"torch_version": "2.11.0+cu130", "gpu_name": "NVIDIA H100 80GB HBM3", **kw}
    return ec.make_key("transformer", spec, "bfloat16", parts, fp, code=code, **kw)


def test_key_changes_with_every_graph_changing_part():
    base = _key()
    assert _key() == base and base.relpath() == _key().relpath()
    export = rung("export")
    variants = [
        _key(export.replace(fuse_qkv=False)),
        _key(export.replace(attention={"backend": "sdpa"})),
        _key(export.replace(attention={"fp8_scaling": "per_head"})),
        _key(export.replace(quantize={"kind": "none"})),
        _key(export.replace(quantize={"granularity": "row"})),
        _key(export.replace(inductor_flags={"epilogue_fusion": True})),
        _key(export.replace(channels_last=False)),
        _key(fp={**FP, "config": {"num_layers": 1}}),
        _key(spec=ShapeSpec("schnell", 512, 512, batch=2)),
        _key(spec=ShapeSpec("schnell", 768, 1360)),
        _key(torch_version="2.12.0"),
        _key(gpu_name="NVIDIA H200"),
    ]
    paths = {base.relpath()} | {k.relpath() for k in variants}
    assert len(paths) == len(variants) + 1
    assert _key(export.replace(export={"cudagraphs": False})) == base  # replay strategy does not change the package
    assert str(base.relpath()).startswith("transformer/schnell-512x512-b1-t256-bfloat16/torch-2.11.0+cu130/nvidia-h100")


def test_module_fingerprint_sees_fused_qkv_and_config():
    pipe = build_pipeline("schnell", "tiny", text_encoders=False)
    before = ec.module_fingerprint(pipe.transformer)
    assert before == ec.module_fingerprint(pipe.transformer)
    pipe.transformer.fuse_qkv_projections()
    assert ec.module_fingerprint(pipe.transformer) != before
    assert ec.module_fingerprint(pipe.vae)["class"].endswith("AutoencoderKL")


def test_get_or_build_miss_then_hit_with_manifest(tmp_path):
    key, calls = _key(), []

    def build(tmp):
        calls.append(tmp)
        assert tmp.endswith(".pt2") and os.path.dirname(tmp) == str(ec.package_dir(tmp_path, key))
        with open(tmp, "wb") as f:
            f.write(b"package")

    path, status, _ = ec.get_or_build(tmp_path, key, build, inputs=[{"name": "x"}])
    assert status == "miss" and len(calls) == 1 and path.read_bytes() == b"package"
    manifest = json.loads((path.parent / ec.MANIFEST_FILE).read_text())
    assert manifest["torch_version"] == key.torch_version and manifest["inputs"] == [{"name": "x"}]
    assert sorted(p.name for p in path.parent.iterdir()) == [ec.MANIFEST_FILE, ec.PACKAGE_FILE]  # no temp files
    path2, status2, build_s = ec.get_or_build(tmp_path, key, build)
    assert (path2, status2, build_s) == (path, "hit", 0.0) and len(calls) == 1


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path):
    key = _key()

    def boom(tmp):
        open(tmp, "wb").write(b"half")
        raise RuntimeError("compiler died")

    with pytest.raises(RuntimeError, match="compiler died"):
        ec.get_or_build(tmp_path, key, boom)
    assert list(ec.package_dir(tmp_path, key).iterdir()) == []
    assert ec.lookup(tmp_path, key) is None  # next run: a miss, not a broken hit


@pytest.mark.parametrize("field,stored,label", [("torch_version", "2.9.1+cu128", "torch version"),
                                                ("gpu_name", "NVIDIA A100-SXM4-80GB", "GPU")])
def test_foreign_package_is_refused_naming_both_values(tmp_path, field, stored, label):
    key = _key()
    ec.get_or_build(tmp_path, key, lambda tmp: open(tmp, "wb").write(b"p"))
    directory = ec.package_dir(tmp_path, key)
    manifest = json.loads((directory / ec.MANIFEST_FILE).read_text())
    (directory / ec.MANIFEST_FILE).write_text(json.dumps({**manifest, field: stored}))  # as if copied from elsewhere
    with pytest.raises(ec.PackageMismatchError) as info:
        ec.lookup(tmp_path, key)
    msg = str(info.value)
    assert isinstance(info.value, FluxperfError)
    assert f"{label} {stored!r}" in msg and repr(getattr(key, field)) in msg
    assert "delete" in msg and str(directory) in msg and "rebuild" in msg


def test_manifest_without_package_is_refused(tmp_path):
    key = _key()
    ec.write_manifest(ec.package_dir(tmp_path, key), key)
    with pytest.raises(ec.PackageMismatchError, match="missing"):
        ec.lookup(tmp_path, key)


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    key = _key()
    directory = ec.package_dir(tmp_path, key)
    ec.write_manifest(directory, key, note="old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ec.write_manifest(directory, key, note="new")
    monkeypatch.undo()
    assert ec.read_manifest(directory)["note"] == "old"  # the old manifest is intact
    assert [p.name for p in directory.iterdir()] == [ec.MANIFEST_FILE]  # and no temp file is left behind


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUXPERF_CACHE", str(tmp_path / "c"))
    assert ec.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FLUXPERF_CACHE")
    assert ec.default_cache_dir().parts[-3:] == (".cache", "fluxperf", "aoti")


def test_module_fingerprint_ignores_private_config_bookkeeping():
    """diffusers keeps `_use_default_values` in set order (differs per process): it must not change the key."""
    pipe = build_pipeline("dev", "tiny", text_encoders=False)
    before = ec.module_fingerprint(pipe.vae)
    names = pipe.vae.config["_use_default_values"]
    pipe.vae._internal_dict = type(pipe.vae.config)({**pipe.vae.config, "_use_default_values": list(reversed(names))})
    assert len(names) > 1 and ec.module_fingerprint(pipe.vae) == before
    pipe.vae._internal_dict = type(pipe.vae.config)({**pipe.vae.config, "scaling_factor": 0.5})
    assert ec.module_fingerprint(pipe.vae) != before  # a real config change still counts
