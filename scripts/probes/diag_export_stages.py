"""The stages of scripts/probes/diag_export.py: each runs in its own subprocess (see that script's docstring).

Every stage takes a Ctx (the child's arguments), prints `STEP <name>` before each risky call (the parent reports
the last one reached when the process dies) and returns a JSON-able dict whose "problems" list is empty when the
stage's outputs matched eager within its tolerance.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

FP32_TOL, BF16_TOL, PIPE_TOL = 1e-4, 0.02, 1e-3


def step(name: str) -> None:
    """Progress marker: the last one printed tells where a crashed stage died."""
    print(f"STEP {name}", flush=True)


# == stages (run in the child process) ===================================================================
class Ctx:
    def __init__(self, args):
        self.work, self.device = Path(args.work), args.device
        variant, hw, batch = args.spec.split(":")
        h, w = (int(v) for v in hw.lower().split("x"))
        self.spec_args = (variant, h, w, int(batch))
        self.text_len, self.weights = args.text_len, args.weights

    def spec(self):
        from fluxperf.model.shapes import ShapeSpec

        return ShapeSpec(*self.spec_args, text_len=self.text_len)


def _setup(ctx):
    import torch

    # exact fp32 on both sides of every comparison (eager ATen vs Inductor kernels)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _sync(torch, ctx):
    if ctx.device == "cuda":
        torch.cuda.synchronize()


def _first(out):
    """A package returns its one output as a tensor or (some torch versions) a 1-element list."""
    return out[0] if isinstance(out, (list, tuple)) else out


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def stage_env(ctx) -> dict:
    import platform

    import torch
    import torch._inductor.config as ic

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "CUDA_HOME": os.environ.get("CUDA_HOME")}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["capability"] = list(torch.cuda.get_device_capability(0))
    for mod in ("triton", "diffusers", "torchao"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - a version report; the error text is the finding
            out[mod] = f"unavailable: {type(exc).__name__}: {exc}"
    for tool in ("gcc", "g++", "nvcc", "gdb"):
        path = shutil.which(tool)
        first = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.splitlines()[:1] if path else []
        out[tool] = f"{path}: {first[0] if first else ''}" if path else None
    out["aot_inductor"] = {k: str(v) for k, v in ic.get_config_copy().items() if k.startswith("aot_inductor.")
                           and any(w in k for w in ("constant", "embed", "multi_arch", "weights", "mmap", "package"))}
    import inspect

    import torch._inductor

    out["aoti_load_package_signature"] = str(inspect.signature(torch._inductor.aoti_load_package))
    from dataclasses import asdict

    from fluxperf.steps.export.loader import process_state, system_libstdcxx

    out["libstdcxx"] = {"LD_PRELOAD": os.environ.get("LD_PRELOAD"), "system": system_libstdcxx(),
                        **asdict(process_state())}
    return out


class _TinyMLP:
    @staticmethod
    def make(torch):
        class TinyMLP(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)
                self.register_buffer("scale", torch.linspace(0.5, 1.5, 64))

            def forward(self, x):
                return self.fc2(torch.nn.functional.gelu(self.fc1(x))) * self.scale

        return TinyMLP


def _linear(ctx, mode: str, graph: bool) -> dict:
    torch = _setup(ctx)
    from fluxperf.steps.export.apply import compile_package, export_program, load_package
    from fluxperf.steps.export.call import ExampleInputs
    from fluxperf.steps.export.cudagraph import CudaGraphRunner

    torch.manual_seed(0)
    model = _TinyMLP.make(torch)().to(ctx.device).eval()
    x = torch.randn(8, 64, device=ctx.device)
    with torch.no_grad():
        ref = model(x)
    step("export")
    program = export_program(model, ExampleInputs(("x",), (x,)))
    step("compile")
    path = ctx.work / f"linear_{mode}_{'graph' if graph else 'plain'}.pt2"
    compile_package(program, str(path), {"aot_inductor.package_constants_in_so": mode == "so"})
    step(f"load(weights={mode}, single_threaded={graph})")
    loaded = load_package(path, model, single_threaded=graph, weights=mode)
    res = {"package_bytes": path.stat().st_size}
    fn = loaded
    if graph:
        step("run plain before any capture")
        with torch.no_grad():
            res["plain_err"] = (_first(loaded(x)) - ref).abs().max().item()
        fn = CudaGraphRunner(loaded, name="linear")
    step("run" + (" (warm-up + capture + replay)" if graph else ""))
    with torch.no_grad():
        out = _first(fn(x))
        _sync(torch, ctx)
        res["max_abs_err"] = (out - ref).abs().max().item()
        step("run again, new values" + (" (replay)" if graph else ""))
        x2 = torch.randn(8, 64, device=ctx.device)
        out2 = _first(fn(x2))
        _sync(torch, ctx)
        res["max_abs_err_2"] = (out2 - model(x2)).abs().max().item()
    if graph:
        res["graph_stats"] = fn.stats.as_dict()
    res["problems"] = [f"{k}={res[k]:.3g} > 1e-4" for k in ("max_abs_err", "max_abs_err_2") if not res[k] <= 1e-4]
    step("teardown")
    del fn, loaded
    _sync(torch, ctx)
    return res


def _flux_module(ctx, component: str, dtype: str):
    from fluxperf.model.build import build_pipeline
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.recipe import Recipe
    from fluxperf.steps.export.call import (
        TransformerExportModule,
        VaeDecodeExportModule,
        transformer_example,
        vae_example,
    )

    step(f"build tiny pipeline ({dtype})")
    pipe = build_pipeline(ctx.spec_args[0], "tiny", device=ctx.device, dtype=dtype, text_encoders=False)
    pipe.set_progress_bar_config(disable=True)
    recipe = Recipe.from_dict({"name": "diag-export", "dtype": dtype, "export": {"enabled": True, "vae": True}})
    dims, spec = dims_of_pipeline(pipe), ctx.spec()
    if component == "transformer":
        t = pipe.transformer
        return pipe, recipe, TransformerExportModule(t), transformer_example(spec, dims, device=t.device, dtype=t.dtype)
    return pipe, recipe, VaeDecodeExportModule(pipe.vae), vae_example(spec, dims, device=pipe.vae.device,
                                                                       dtype=pipe.vae.dtype)


def _build_load(ctx, component, module, example, recipe, weights: str, single_threaded: bool):
    """What fluxperf.steps.export.apply._package does (same key, same cache), with a STEP marker between the parts."""
    from fluxperf.steps.export import cache as ec
    from fluxperf.steps.export.apply import (
        compile_package,
        export_program,
        inductor_configs_for,
        load_package,
        package_key,
    )

    key = package_key(component, module, ctx.spec(), recipe, weights)
    configs = inductor_configs_for(recipe, weights)

    def build(tmp):
        step(f"{component}: torch.export")
        program = export_program(module, example)
        step(f"{component}: AOTI compile (package_constants_in_so={configs['aot_inductor.package_constants_in_so']})")
        compile_package(program, tmp, configs)

    path, status, build_s = ec.get_or_build(ctx.work / "aoti", key, build, inputs=example.signature(),
                                            spec=vars(ctx.spec()), inductor_configs=configs, weights=weights)
    step(f"{component}: load ({status}, weights={weights}, single_threaded={single_threaded})")
    loaded = load_package(path, module, single_threaded=single_threaded, weights=weights)
    return loaded, {"cache": status, "build_s": round(build_s, 2)}


def _flux(ctx, component: str, dtype: str, weights: str, graph: bool) -> dict:
    torch = _setup(ctx)
    from fluxperf.steps.export.cudagraph import CudaGraphRunner

    pipe, recipe, module, example = _flux_module(ctx, component, dtype)
    with torch.no_grad():
        ref = module(*example.args)
    tol = FP32_TOL
    if dtype != "float32":  # the tiny random model's own bf16 error is large (0.22 vs fp32 eager on CPU)
        _, _, module32, example32 = _flux_module(ctx, component, "float32")
        with torch.no_grad():
            eager_err = _rel(ref, module32(*example32.args))
        del module32, example32
        tol = 2 * eager_err + BF16_TOL  # a package with wrong weights or inputs is off by ~1.4
    loaded, res = _build_load(ctx, component, module, example, recipe, weights, single_threaded=graph)
    args = [a.contiguous() for a in example.args]
    step("run plain")
    with torch.no_grad():
        out = _first(loaded(*args))
        _sync(torch, ctx)
    res["rel_err"] = _rel(out, ref)
    if graph:
        runner = CudaGraphRunner(loaded, name=component)
        step("graph: warm-up + capture + replay")
        with torch.no_grad():
            g1 = runner(*args)
            _sync(torch, ctx)
            step("graph: replay with new values")
            fresh = ("hidden_states", "encoder_hidden_states", "latents")  # new values, same shapes
            args2 = [a + 0.1 * torch.randn_like(a) if n in fresh else a for n, a in zip(example.names, args)]
            g2 = runner(*args2)
            ref2 = module(*args2)
            _sync(torch, ctx)
        res.update(graph_rel_err=_rel(_first(g1), ref), graph_rel_err_2=_rel(_first(g2), ref2),
                   graph_stats=runner.stats.as_dict())
        step("teardown graphs")
        runner.clear()
    res["tolerance"] = tol
    res["problems"] = [f"{k}={v:.3g} > {tol}" for k, v in res.items() if k.startswith(("rel_err", "graph_rel"))
                       and not v <= tol]
    del loaded
    _sync(torch, ctx)
    return res


def _pipe_call(torch, pipe, ctx, steps: int):
    variant, h, w, b = ctx.spec_args
    g = torch.Generator().manual_seed(0)
    dim = pipe.transformer.config.joint_attention_dim
    pooled = pipe.transformer.config.pooled_projection_dim
    return pipe(prompt_embeds=torch.randn(b, ctx.text_len, dim, generator=g).to(ctx.device),
                pooled_prompt_embeds=torch.randn(b, pooled, generator=g).to(ctx.device), height=h, width=w,
                num_inference_steps=steps, guidance_scale=3.5, output_type="pt",
                generator=torch.Generator(ctx.device).manual_seed(1)).images


def stage_pipeline(ctx) -> dict:
    """The public path of the failing test: apply_export (CUDA graphs), forward/decode/pipeline, re-apply (hit)."""
    torch = _setup(ctx)
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs, vae_latents
    from fluxperf.steps.export.apply import apply_export, remove_export

    pipe, recipe, _, _ = _flux_module(ctx, "transformer", "float32")
    spec, dims, steps = ctx.spec(), dims_of_pipeline(pipe), 2
    inputs = transformer_inputs(spec, dims, device=ctx.device, dtype=torch.float32)
    inputs2 = transformer_inputs(spec, dims, device=ctx.device, dtype=torch.float32, seed=1)
    latents = vae_latents(spec, dims, device=ctx.device, dtype=torch.float32)
    with torch.no_grad():
        ref, ref2 = pipe.transformer(**inputs)[0], pipe.transformer(**inputs2)[0]
        ref_image = pipe.vae.decode(latents, return_dict=False)[0]
    ref_pipe = _pipe_call(torch, pipe, ctx, steps)
    step("apply_export")
    start = time.perf_counter()
    report = apply_export(pipe, recipe, spec, cache_dir=ctx.work / "aoti", weights=ctx.weights)
    res = {"cache": report["cache"], "build_s": report["build_s"], "load_s": report["load_s"],
           "apply_s": round(time.perf_counter() - start, 2), "weights": report["weights"]}
    try:
        t_run, v_run = report["runners"]["transformer"], report["runners"]["vae_decoder"]
        step("transformer call 1 (warm-up + capture + replay)")
        with torch.no_grad():
            out = pipe.transformer(**inputs)[0]
            _sync(torch, ctx)
            step("transformer call 2 (replay, new values)")
            out2 = pipe.transformer(**inputs2)[0]
            step("vae decode (warm-up + capture + replay)")
            image = pipe.vae.decode(latents, return_dict=False)[0]
            _sync(torch, ctx)
        res.update(rel_err=_rel(out, ref), rel_err_2=_rel(out2, ref2), new_values_differ=_rel(out2, out),
                   vae_rel_err=_rel(image, ref_image), t_stats_calls=t_run.stats.as_dict())
        step(f"pipeline call, {steps} steps")
        res["pipe_rel_err"] = _rel(_pipe_call(torch, pipe, ctx, steps), ref_pipe)
        _sync(torch, ctx)
        res.update(t_stats=t_run.stats.as_dict(), v_stats=v_run.stats.as_dict())
    finally:
        step("remove_export")
        remove_export(pipe)
    del report, t_run, v_run
    step("apply_export again (cache)")
    start = time.perf_counter()
    again = apply_export(pipe, recipe, spec, cache_dir=ctx.work / "aoti", weights=ctx.weights)
    res.update(cache_2=again["cache"], apply_s_2=round(time.perf_counter() - start, 2))
    try:
        with torch.no_grad():
            res["rel_err_reload"] = _rel(pipe.transformer(**inputs)[0], ref)
    finally:
        remove_export(pipe)
    problems = [f"{k}={res[k]:.3g} > {FP32_TOL}" for k in ("rel_err", "rel_err_2", "vae_rel_err", "rel_err_reload")
                if not res[k] <= FP32_TOL]
    problems += [] if res["pipe_rel_err"] <= PIPE_TOL else [f"pipe_rel_err={res['pipe_rel_err']:.3g} > {PIPE_TOL}"]
    problems += [] if res["new_values_differ"] > 1e-2 else ["second call returned the first call's result"]
    problems += [] if set(res["cache_2"].values()) == {"hit"} else [f"re-apply was not a cache hit: {res['cache_2']}"]
    res["problems"] = problems
    return res


def stage_weights_replaced(ctx) -> dict:
    """apply_export (weights=user, CUDA graphs), then load_state_dict(assign=True) with other weights: the package
    must follow them (re-pointed constants, re-captured graph); with weights='so' the call must be refused."""
    torch = _setup(ctx)
    from fluxperf.errors import FluxperfError
    from fluxperf.model.build import build_pipeline
    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs
    from fluxperf.steps.export.apply import apply_export, remove_export

    pipe, recipe, _, _ = _flux_module(ctx, "transformer", "float32")
    recipe = recipe.replace(export={"vae": False})
    other = build_pipeline(ctx.spec_args[0], "tiny", device=ctx.device, dtype="float32", text_encoders=False, seed=1)
    inputs = transformer_inputs(ctx.spec(), dims_of_pipeline(pipe), device=ctx.device, dtype=torch.float32)
    with torch.no_grad():
        ref_old, ref_new = pipe.transformer(**inputs)[0], other.transformer(**inputs)[0]
    res = {}
    for weights in ("user", "so"):
        step(f"apply_export (weights={weights})")
        fresh = build_pipeline(ctx.spec_args[0], "tiny", device=ctx.device, dtype="float32", text_encoders=False)
        report = apply_export(fresh, recipe, ctx.spec(), cache_dir=ctx.work / "aoti", weights=weights)
        try:
            with torch.no_grad():
                step("call with the exported weights (capture)")
                res[f"{weights}_rel_err_before"] = _rel(fresh.transformer(**inputs)[0], ref_old)
                step("load_state_dict(assign=True) with other weights, call again")
                fresh.transformer.load_state_dict(other.transformer.state_dict(), assign=True)
                try:
                    out = fresh.transformer(**inputs)[0]
                    _sync(torch, ctx)
                    res[f"{weights}_rel_err_after"] = _rel(out, ref_new)
                    res[f"{weights}_rel_err_vs_old"] = _rel(out, ref_old)
                except FluxperfError as exc:
                    res[f"{weights}_error"] = f"{type(exc).__name__}: {exc}"
            res[f"{weights}_graph_stats"] = report["runners"]["transformer"].stats.as_dict()
        finally:
            step("remove_export")
            remove_export(fresh)
        del report, fresh
    res["problems"] = [p for p in (
        None if res.get("user_rel_err_after", 1.0) <= FP32_TOL else f"user: not following the new weights: {res}",
        None if "WeightsReplacedError" in res.get("so_error", "") else f"so: not refused: {res.get('so_error')}",
    ) if p]
    return res


def stage_segv(ctx) -> dict:
    """Self-test of the isolation: dies of SIGSEGV after one step (never part of a full run)."""
    import ctypes

    step("about to read address 0")
    ctypes.string_at(0)
    return {}


STAGES = {
    "segv": stage_segv,
    "env": stage_env,
    "linear_so": lambda c: _linear(c, "so", False),
    "linear_user": lambda c: _linear(c, "user", False),
    "linear_copy": lambda c: _linear(c, "copy", False),
    "linear_so_graph": lambda c: _linear(c, "so", True),
    "linear_user_graph": lambda c: _linear(c, "user", True),
    "flux_fp32": lambda c: _flux(c, "transformer", "float32", "user", False),
    "flux_bf16": lambda c: _flux(c, "transformer", "bfloat16", "user", False),
    "vae": lambda c: _flux(c, "vae_decoder", "float32", "user", True),
    "flux_so_graph": lambda c: _flux(c, "transformer", "float32", "so", True),
    "flux_fp32_graph": lambda c: _flux(c, "transformer", "float32", "user", True),
    "pipeline": stage_pipeline,
    "weights_replaced": stage_weights_replaced,
}
CUDA_ONLY = {"linear_so_graph", "linear_user_graph", "vae", "flux_so_graph", "flux_fp32_graph", "pipeline",
             "weights_replaced"}
