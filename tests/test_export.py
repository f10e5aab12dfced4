"""Export on CPU: example inputs for any (variant, size, batch), torch.export of the tiny transformer, the
pipeline adapters, weights modes, and the refusals (no CUDA, caching active). Package cache: test_export_cache.py."""

from __future__ import annotations

import pytest
import torch

from fluxperf.errors import RecipeError, UnavailableError
from fluxperf.ladder import rung
from fluxperf.model.build import build_pipeline, pipeline_class
from fluxperf.model.configs import dims_of_pipeline, model_dims
from fluxperf.model.shapes import ShapeSpec
from fluxperf.recipe import Recipe
from fluxperf.steps.export.apply import (
    ExportCacheConflictError,
    ExportError,
    apply_export,
    cache_hooks,
    constants_map,
    export_program,
    install_adapters,
    remove_export,
)
from fluxperf.steps.export.call import (
    ExportShapeError,
    TransformerExportModule,
    VaeDecodeExportModule,
    transformer_example,
    vae_example,
)
from fluxperf.steps.export.cudagraph import CudaGraphRunner, EagerReplayBackend

RESOLUTIONS = [(512, 512), (1024, 1024), (768, 1360)]


def _prepare_ids(spec: ShapeSpec) -> torch.Tensor:
    """The image ids the real pipeline builds (FluxPipeline._prepare_latent_image_ids; Kontext adds index 1)."""
    h, w = spec.height // 16, spec.width // 16
    ids = pipeline_class("dev")._prepare_latent_image_ids(spec.batch, h, w, "cpu", torch.float32)
    if spec.variant == "kontext":
        cond = ids.clone()
        cond[..., 0] = 1
        ids = torch.cat([ids, cond], dim=0)
    return ids


# -- example inputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["schnell", "dev", "kontext"])
@pytest.mark.parametrize("height,width", RESOLUTIONS)
@pytest.mark.parametrize("batch", [1, 2])
def test_example_inputs_are_consistent_for_any_shape(variant, height, width, batch):
    spec, dims = ShapeSpec(variant, height, width, batch), model_dims(variant, "full")
    ex = transformer_example(spec, dims)
    x = dict(zip(ex.names, ex.args))
    tokens = (height // 16) * (width // 16) * (2 if variant == "kontext" else 1)
    assert ("guidance" in x) == (variant != "schnell")
    assert x["hidden_states"].shape == (batch, tokens, 64)
    assert x["img_ids"].shape == (x["hidden_states"].shape[1], 3)  # one id per image token
    assert x["encoder_hidden_states"].shape == (batch, spec.text_tokens, 4096)
    assert x["txt_ids"].shape == (x["encoder_hidden_states"].shape[1], 3)
    assert x["pooled_projections"].shape == (batch, 768) and x["timestep"].shape == (batch,)
    if variant != "schnell":
        assert x["guidance"].shape == (batch,)
    assert torch.equal(x["img_ids"].float(), _prepare_ids(spec))
    assert vae_example(spec, dims).args[0].shape == (batch, 16, height // 8, width // 8)
    assert [s["shape"] for s in ex.signature()] == [list(a.shape) for a in ex.args]


def _capture_pipeline_call(variant: str, height: int, width: int, batch: int):
    """Run a tiny pipeline once; return (pipe, transformer kwargs of the first step, latents given to decode)."""
    pipe = build_pipeline(variant, "tiny", text_encoders=False)
    text_len = 24
    g = torch.Generator().manual_seed(0)
    kwargs = dict(prompt_embeds=torch.randn(batch, text_len, 32, generator=g, dtype=torch.float32).bfloat16(),
                  pooled_prompt_embeds=torch.randn(batch, 32, generator=g).bfloat16(), height=height, width=width,
                  num_inference_steps=1, output_type="pt", max_sequence_length=text_len)
    if variant == "kontext":
        from PIL import Image

        kwargs.update(image=Image.new("RGB", (width, height), (120, 30, 200)), _auto_resize=False,
                      max_area=height * width)  # the default max_area (1024^2) would upscale the call
    seen = {}
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.setdefault("t", (a, dict(kw))), with_kwargs=True)
    original = pipe.vae.decode
    pipe.vae.decode = lambda z, *a, **k: seen.setdefault("z", z) is not None and original(z, *a, **k)
    pipe(**kwargs)
    del pipe.vae.decode
    return pipe, seen["t"], seen["z"], ShapeSpec(variant, height, width, batch, text_len=text_len)


@pytest.mark.parametrize("variant,batch", [("schnell", 2), ("dev", 1), ("kontext", 2)])
def test_example_inputs_match_what_the_real_pipeline_passes(variant, batch):
    pipe, (args, called), latents, spec = _capture_pipeline_call(variant, 64, 96, batch)
    assert args == () and called["return_dict"] is False  # keyword call: the adapter relies on it
    ex = transformer_example(spec, dims_of_pipeline(pipe), dtype=pipe.transformer.dtype)
    for name, example in zip(ex.names, ex.args):
        assert tuple(called[name].shape) == tuple(example.shape), name
    assert torch.equal(called["img_ids"].float(), ex.args[ex.names.index("img_ids")].float())
    assert latents.shape == vae_example(spec, dims_of_pipeline(pipe)).args[0].shape

    # the adapter turns exactly this call into the package's positional inputs, with the package's dtypes
    seen = []
    install_adapters(pipe, spec, lambda *a: seen.append(a) or torch.zeros_like(a[0]), ex)
    pipe.transformer(*args, **called)
    assert [(tuple(a.shape), a.dtype) for a in seen[0]] == [(tuple(e.shape), e.dtype) for e in ex.args]
    assert all(a.is_contiguous() for a in seen[0])  # Kontext/dev pass guidance.expand(batch): stride 0
    if variant == "kontext":
        assert not called["guidance"].is_contiguous()  # ...so this test does cover the expand case


def test_torch_export_of_tiny_transformer_on_cpu():
    pipe = build_pipeline("dev", "tiny", dtype="float32", text_encoders=False)
    module = TransformerExportModule(pipe.transformer)
    ex = transformer_example(ShapeSpec("dev", 64, 96, text_len=16), dims_of_pipeline(pipe), dtype=torch.float32)
    program = export_program(module, ex, strict=False)
    with torch.no_grad():
        ref = module(*ex.args)
        out = program.module()(*ex.args)
    assert out.shape == ref.shape == ex.args[0].shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    user_inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    assert len(user_inputs) == len(ex.names) == 7
    # load_package hands the package constants by these names: they must be the wrapper module's names
    assert set(program.state_dict) | set(program.constants) <= set(constants_map(module))


# -- pipeline adapters (eager runners stand in for the packages) ------------------------------------------
def _call(pipe, height=64, width=96, steps=2):
    g = torch.Generator().manual_seed(0)
    return pipe(prompt_embeds=torch.randn(1, 16, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                height=height, width=width, num_inference_steps=steps, guidance_scale=3.5, output_type="pt",
                generator=torch.Generator().manual_seed(1)).images


def test_adapters_run_the_pipeline_through_graph_runners():
    pipe = build_pipeline("dev", "tiny", dtype="float32", text_encoders=False)
    ref = _call(pipe)
    spec, dims = ShapeSpec("dev", 64, 96, text_len=16), dims_of_pipeline(pipe)
    t_run = CudaGraphRunner(TransformerExportModule(pipe.transformer), backend=EagerReplayBackend())
    v_run = CudaGraphRunner(VaeDecodeExportModule(pipe.vae), backend=EagerReplayBackend())
    install_adapters(pipe, spec, t_run, transformer_example(spec, dims, dtype=torch.float32),
                     v_run, vae_example(spec, dims, dtype=torch.float32))
    out = _call(pipe)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert t_run.stats.as_dict() == {"recorded": 1, "replays": 2, "evictions": 0, "cached": 1}  # one graph, 2 steps
    assert v_run.stats.replays == 1
    assert pipe.transformer.config.guidance_embeds and pipe.transformer.dtype == torch.float32  # still readable

    with pytest.raises(ExportShapeError, match=r"'hidden_states' has shape \(1, 48, 64\).*built for \(1, 24, 64\).*height=64"):
        _call(pipe, height=128)
    x = dict(zip(*(lambda e: (e.names, e.args))(transformer_example(spec, dims, dtype=torch.float32))))
    with pytest.raises(ExportShapeError, match="joint_attention_kwargs"):
        pipe.transformer(**x, joint_attention_kwargs={"scale": 0.5})
    with pytest.raises(ExportError, match="already runs an exported package"):
        install_adapters(pipe, spec, t_run, transformer_example(spec, dims))

    assert remove_export(pipe) and not remove_export(pipe)
    assert "forward" not in pipe.transformer.__dict__ and "decode" not in pipe.vae.__dict__
    torch.testing.assert_close(_call(pipe), ref, rtol=0, atol=0)


# -- refusals --------------------------------------------------------------------------------------------
def _export_recipe():
    return Recipe.from_dict({"dtype": "bfloat16", "export": {"enabled": True}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_apply_export_needs_cuda():
    pipe = build_pipeline("schnell", "tiny", text_encoders=False)
    with pytest.raises(UnavailableError, match="no CUDA device") as info:
        apply_export(pipe, _export_recipe(), ShapeSpec("schnell", 64, 64))
    assert "not a supported rung" in str(info.value)
    with pytest.raises(RecipeError, match="export.enabled=False"):
        apply_export(pipe, Recipe(), ShapeSpec("schnell", 64, 64))


def test_export_refuses_diffusers_first_block_cache():
    from diffusers.hooks import FirstBlockCacheConfig

    pipe = build_pipeline("dev", "tiny", text_encoders=False)
    assert cache_hooks(pipe) == []
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(ExportCacheConflictError, match="FirstBlockCacheConfig.*opaque compiled graph.*Fix: disable"):
        apply_export(pipe, _export_recipe(), ShapeSpec("dev", 64, 64))
    assert any("fbc_leader_block_hook" in h for h in cache_hooks(pipe))
    pipe.transformer.disable_cache()
    assert cache_hooks(pipe) == []


@pytest.mark.cache_dit
def test_export_refuses_cache_dit():
    cache_dit = pytest.importorskip("cache_dit")
    pipe = build_pipeline("dev", "tiny", text_encoders=False)
    cache_dit.enable_cache(pipe)
    try:
        with pytest.raises(ExportCacheConflictError, match="cache-dit"):
            apply_export(pipe, _export_recipe(), ShapeSpec("dev", 64, 64))
    finally:
        cache_dit.disable_cache(pipe)
    assert cache_hooks(pipe) == []


# -- weights modes (how a package gets its weights) --------------------------------------------------------
def test_weights_mode_from_argument_env_and_default(monkeypatch):
    from fluxperf.steps.export.apply import WEIGHTS_ENV, inductor_configs_for, weights_mode

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert weights_mode() == "user" and weights_mode("copy") == "copy"
    monkeypatch.setenv(WEIGHTS_ENV, "so")
    assert weights_mode() == "so" and weights_mode("user") == "user"  # the argument wins over the environment
    monkeypatch.setenv(WEIGHTS_ENV, "inline")
    with pytest.raises(RecipeError, match=r"\$FLUXPERF_EXPORT_WEIGHTS='inline'.*Fix: use one of \['user', 'copy', 'so'\]"):
        weights_mode()
    with pytest.raises(RecipeError, match=r"weights='mmap'"):
        weights_mode("mmap")
    recipe = rung("export")
    assert inductor_configs_for(recipe, "so")["aot_inductor.package_constants_in_so"] is True
    assert inductor_configs_for(recipe, "user")["aot_inductor.package_constants_in_so"] is False
    assert inductor_configs_for(recipe, "copy")["aot_inductor.package_constants_in_so"] is False


def test_package_key_has_weight_values_only_when_they_are_inside():
    from fluxperf.steps.export.apply import package_key

    spec = ShapeSpec("dev", 64, 96, text_len=16)
    recipe = Recipe.from_dict({"dtype": "float32", "export": {"enabled": True}})
    a = TransformerExportModule(build_pipeline("dev", "tiny", dtype="float32", text_encoders=False, seed=0).transformer)
    b = TransformerExportModule(build_pipeline("dev", "tiny", dtype="float32", text_encoders=False, seed=1).transformer)
    user = package_key("transformer", a, spec, recipe, "user")
    assert user == package_key("transformer", b, spec, recipe, "user")  # weights loaded later: any seed
    assert user == package_key("transformer", a, spec, recipe, "copy")  # same package, loaded differently
    so_a = package_key("transformer", a, spec, recipe, "so")
    assert so_a != user and so_a.config_hash != package_key("transformer", b, spec, recipe, "so").config_hash
    assert so_a == package_key("transformer", a, spec, recipe, "so")
    with torch.no_grad():
        next(a.parameters()).view(-1)[0] += 1.0  # one changed value among the sampled ones
    assert package_key("transformer", a, spec, recipe, "so") != so_a


class _FakePackage:
    """Records what load_package does with a loaded AOTInductor package."""

    def __init__(self, fqns):
        self.fqns, self.loads = fqns, []

    def get_constant_fqns(self):
        return list(self.fqns)

    def load_constants(self, constants, *, check_full_update, user_managed):
        self.loads.append((constants, check_full_update, user_managed))


@pytest.mark.parametrize("mode", ["user", "copy", "so"])
def test_load_package_gives_weights_per_mode(monkeypatch, mode):
    import torch._inductor

    from fluxperf.steps.export import loader as aoti_loader
    from fluxperf.steps.export.apply import load_package

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    fake, calls, checked = _FakePackage(["0.weight", "0.bias", "1.running_mean"]), [], []
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path, **kw: calls.append((path, kw)) or fake)
    monkeypatch.setattr(aoti_loader, "ensure_loadable", checked.append)  # the file does not exist: record the check
    loaded = load_package("/p/package.pt2", model, single_threaded=True, weights=mode)
    assert loaded is fake and calls == [("/p/package.pt2", {"run_single_threaded": True})]  # CPU: no device_index
    assert checked == ["/p/package.pt2"]  # every load goes through the libstdc++ check first
    if mode == "so":
        assert fake.loads == []  # the weights are inside the package
        return
    (constants, full, user_managed), = fake.loads
    assert full is True and user_managed is (mode == "user") and sorted(constants) == sorted(fake.fqns)
    weight = constants["0.weight"]
    assert not isinstance(weight, torch.nn.Parameter) and not weight.requires_grad
    assert weight.data_ptr() == model[0].weight.data_ptr()  # no copy made here
    if mode == "user":
        assert loaded._fluxperf_constants is constants  # the package reads these: referenced for its whole life


def test_load_package_names_missing_constants_and_the_fallback(monkeypatch):
    import torch._inductor

    from fluxperf.steps.export import loader as aoti_loader
    from fluxperf.steps.export.apply import load_package

    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path, **kw: _FakePackage(["_tensor_constant0"]))
    monkeypatch.setattr(aoti_loader, "ensure_loadable", lambda path: None)
    with pytest.raises(ExportError, match=r"needs 1 constants.*_tensor_constant0.*FLUXPERF_EXPORT_WEIGHTS=so"):
        load_package("/p.pt2", torch.nn.Linear(2, 2), single_threaded=False, weights="user")


def test_remove_export_drops_captured_graphs_first():
    pipe = build_pipeline("dev", "tiny", dtype="float32", text_encoders=False)
    spec, dims = ShapeSpec("dev", 64, 96, text_len=16), dims_of_pipeline(pipe)
    run = CudaGraphRunner(TransformerExportModule(pipe.transformer), backend=EagerReplayBackend())
    ex = transformer_example(spec, dims, dtype=torch.float32)
    install_adapters(pipe, spec, run, ex)
    pipe.transformer(**dict(zip(ex.names, ex.args)))
    assert run.stats.cached == 1
    assert remove_export(pipe) and run.stats.cached == 0 and run.stats.recorded == 1


# -- loads go through the libstdc++ check (issue 14.1) ------------------------------------------------------------
def test_load_package_refuses_a_package_that_would_crash_this_process(monkeypatch, tmp_path):
    """A package whose wrapper carries its own libstdc++, in a process without the preload: refused with the fix
    before torch opens it. The detection itself runs on real libraries in test_aoti_loader.py; here its verdict and
    the process state are given, to test that load_package asks before every load."""
    import zipfile

    import torch._inductor

    from fluxperf.steps.export import loader as aoti_loader
    from fluxperf.steps.export.apply import LibstdcxxPreloadError, load_package

    path = tmp_path / "p.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("p/data/aotinductor/model/x.wrapper.so", b"\x7fELF not really")
    carrying = aoti_loader.WrapperCheck(str(path), "x.wrapper.so", ("libc.so.6",), ("_ZNSt6locale7classicEv",),
                                        None, 700)
    opened = []
    monkeypatch.setattr(aoti_loader, "inspect_package", lambda p: [carrying])
    monkeypatch.setattr(aoti_loader, "process_state", lambda: aoti_loader.ProcessState(False, (), ()))
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: opened.append(a))
    with pytest.raises(LibstdcxxPreloadError, match=r"carries its own copy of libstdc\+\+.*Fix:.*LD_PRELOAD="):
        load_package(path, torch.nn.Linear(2, 2), single_threaded=False)
    assert opened == []  # never handed to torch: no segfault possible
