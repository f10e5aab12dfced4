"""Export package cache: keys (every graph-changing part), manifests, refusal of foreign packages, atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from fluxperf.errors import FluxperfError
from fluxperf.ladder import rung
from fluxperf.model.build import build_pipeline
from fluxperf.model.shapes import ShapeSpec
from fluxperf.recipe import Recipe
from fluxperf.steps.export import cache as ec

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


# -- stale packages: the traced code is in the key (issue 13.3) ----------------------------------------------------
def _package_key(pipe, recipe=None):
    from fluxperf.steps.export.apply import package_key
    from fluxperf.steps.export.call import TransformerExportModule

    recipe = recipe or Recipe.from_dict({"dtype": "float32", "export": {"enabled": True}})
    return package_key("transformer", TransformerExportModule(pipe.transformer), ShapeSpec("dev", 64, 96), recipe)


def _build_counter(calls):
    def build(tmp):
        calls.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"package")
    return build


@pytest.mark.parametrize("dist,new", [("diffusers", "0.43.0"), ("torchao", "0.19.0"), ("triton", "3.6.0"),
                                      ("fa3", "fa3-fwd 0.0.4 (fa3_fwd_interface)"), ("fluxperf", "0.2.0")])
def test_an_upgrade_of_traced_code_is_a_miss(tmp_path, monkeypatch, dist, new):
    import fluxperf
    from fluxperf import env

    pipe = build_pipeline("dev", "tiny", dtype="float32", text_encoders=False)
    calls, key = [], _package_key(pipe)
    assert ec.get_or_build(tmp_path, key, _build_counter(calls))[1] == "miss"
    assert ec.get_or_build(tmp_path, _package_key(pipe), _build_counter(calls))[1] == "hit"  # stable key
    if dist == "fa3":
        monkeypatch.setattr(env, "fa3_build", lambda: new)
    elif dist == "fluxperf":
        monkeypatch.setattr(fluxperf, "__version__", new)
    else:
        real = env.dist_version
        monkeypatch.setattr(env, "dist_version", lambda name: new if name == dist else real(name))
    bumped = _package_key(pipe)
    _, status, _ = ec.get_or_build(tmp_path, bumped, _build_counter(calls))
    assert status == "miss" and len(calls) == 2  # rebuilt, not served from before the upgrade
    assert bumped.relpath() != key.relpath() and bumped.code_hash != key.code_hash


def _user_module(tmp_path, name: str, source: str):
    import importlib.util
    import sys

    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return path, module


ROPE = '''
import torch
from diffusers.models.transformers.transformer_flux import FluxPosEmbed


class UserPosEmbed(FluxPosEmbed):
    """RoPE with a theta set in the source, as a local patch would."""

    def __init__(self, axes_dim):
        super().__init__(theta=THETA, axes_dim=axes_dim)
'''


def test_a_change_in_traced_source_is_a_miss(tmp_path, monkeypatch):
    """The same model with a locally patched class (another RoPE theta in the source): same versions, same config,
    another traced graph. The key must change with the file."""
    pipe = build_pipeline("dev", "tiny", dtype="float32", text_encoders=False)
    path, mod = _user_module(tmp_path, "fluxperf_test_user_rope", ROPE.replace("THETA", "10000"))
    monkeypatch.setattr(pipe.transformer, "pos_embed", mod.UserPosEmbed(pipe.transformer.pos_embed.axes_dim))
    key = _package_key(pipe)
    assert key == _package_key(pipe)
    path.write_text(ROPE.replace("THETA", "20000.0"))  # the edit (the running class is unchanged: only the file)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    changed = _package_key(pipe)
    assert changed.relpath() != key.relpath() and changed.code_hash != key.code_hash


def test_a_changed_module_attribute_is_a_miss():
    """RoPE theta lives on FluxPosEmbed, not in the model config: changing it changes the traced code too."""
    pipe = build_pipeline("dev", "tiny", dtype="float32", text_encoders=False)
    key = _package_key(pipe)
    pipe.transformer.pos_embed.theta = 20000
    assert _package_key(pipe).relpath() != key.relpath()
    pipe.transformer.pos_embed.theta = 10000
    assert _package_key(pipe) == key


def test_processor_source_is_in_the_key(tmp_path):
    """An attention processor from the user's own module: its source joins the hash (files of every processor)."""
    from fluxperf.steps.export.code import traced_source_files

    pipe = build_pipeline("dev", "tiny", dtype="float32", text_encoders=False)
    _, mod = _user_module(tmp_path, "fluxperf_test_user_proc", "from diffusers.models.transformers.transformer_flux "
                          "import FluxAttnProcessor\n\n\nclass UserProcessor(FluxAttnProcessor):\n    pass\n")
    before = traced_source_files(pipe.transformer)
    assert any(f.endswith("transformer_flux.py") for f in before)  # diffusers' own model and processor
    assert any(f.endswith("embeddings.py") for f in before)  # apply_rotary_emb & co., one import away
    assert any(f.endswith("fluxperf/steps/attention/processor.py") for f in before)  # fluxperf's traced code
    pipe.transformer.set_attn_processor(mod.UserProcessor())
    assert str(tmp_path / "fluxperf_test_user_proc.py") in traced_source_files(pipe.transformer)


def test_module_fingerprint_sees_forward_hooks():
    """A hook changes what torch.export traces (the perf tier's injected slowdown hooks every block): a package
    exported without it must be a cache miss with it, and a hook with other captured sizes a miss again."""
    import torch

    from fluxperf.bench.slowdown import install_slowdown

    pipe = build_pipeline("schnell", "tiny", text_encoders=False)
    plain = ec.module_fingerprint(pipe.transformer)
    spec = ShapeSpec("schnell", 64, 64, text_len=16)
    handles = install_slowdown(pipe.transformer.to(torch.bfloat16), 0.05, spec)
    hooked = ec.module_fingerprint(pipe.transformer)
    assert hooked["hooks"] != plain["hooks"]
    for h in handles:
        h.remove()
    handles = install_slowdown(pipe.transformer, 0.5, spec)
    assert ec.module_fingerprint(pipe.transformer)["hooks"] not in (plain["hooks"], hooked["hooks"])
    for h in handles:
        h.remove()
    assert ec.module_fingerprint(pipe.transformer)["hooks"] == plain["hooks"]
