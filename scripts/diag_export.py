#!/usr/bin/env python3
"""Pinpoint where the AOTInductor export path crashes: every stage runs in its OWN subprocess.

A segfault (or hang) then kills only that stage; its exit status (negative: the signal), the last `STEP` it
reached and the tail of its output (faulthandler on: `python -X faulthandler`, PYTHONFAULTHANDLER=1) are recorded.
Stages (the letters of the brief):
  env               versions, compilers, AOTInductor settings (never crashes; context for the rest)
  a  linear_so      nn.Linear-GELU-Linear (+ a buffer): export, AOTI build with weights in the .so, load, run
  b  linear_user    same, built without weights + load_constants(user_managed=True)      (the rung's default)
  b' linear_copy    same, built without weights + load_constants(user_managed=False)     (the package copies)
  e' linear_so_graph / linear_user_graph: the linear packages replayed under fluxperf.cudagraph.CudaGraphRunner
  c  flux_fp32      tiny FLUX transformer fp32 (weights='user'), no CUDA graph
  d  flux_bf16      same in bf16
  f  vae            the VAE decoder fp32: plain run, then under the CUDA-graph runner
  s  flux_so_graph  tiny FLUX fp32 built WITH its weights (weights='so'), under the CUDA-graph runner (the fallback)
  e  flux_fp32_graph  stage c's package (cache hit) under the CUDA-graph runner
  g  pipeline       public apply_export on the tiny dev pipeline (CUDA graphs), pipeline call, remove, cached re-apply
Stages run in three waves (linear+env, FLUX builds, cache-hit stages) within a time budget (default 200 s, +30 s for gdb).
If a stage died of a signal and gdb exists, that stage is re-run once under gdb for a native backtrace.

Run on the GPU machine:   source scripts/device-env.sh; python3 scripts/diag_export.py
Writes $OUT/diag_export.json (summary, tails) and $OUT/diag_export.log (all output); prints a final table.
One stage by hand:        python3 scripts/diag_export.py --stage linear_user --work /tmp/diag   (CPU: --device cpu)
The GPU tests (tests/gpu/test_export_gpu.py) run stages through `--stage ... --json` the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAVES = [["env", "linear_so", "linear_user", "linear_copy", "linear_so_graph", "linear_user_graph"],
         ["flux_fp32", "flux_bf16", "vae", "flux_so_graph"],
         ["flux_fp32_graph", "pipeline"]]
WAVE_LIMIT_S = [70, 120, 70]
PARALLEL_COMPILE_THREADS = "4"  # per stage: 4 concurrent stages share 16 cores
MEANING = {
    "linear_so": "AOTI build+load+run on this GPU at all (weights in the .so)",
    "linear_user": "constants loaded with user_managed=True",
    "linear_copy": "constants copied in with user_managed=False",
    "linear_so_graph": "an AOTI package under CUDA-graph capture",
    "linear_user_graph": "user-managed constants under CUDA-graph capture",
    "flux_fp32": "tiny FLUX fp32 package, no graph",
    "flux_bf16": "tiny FLUX bf16 package, no graph",
    "vae": "VAE decoder package, plain then graph",
    "flux_so_graph": "FLUX with weights in the .so, under graphs (fallback FLUXPERF_EXPORT_WEIGHTS=so)",
    "flux_fp32_graph": "FLUX fp32 package under graphs",
    "pipeline": "public apply_export + pipeline call (the failing test's path)",
}
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
        from fluxperf.shapes import ShapeSpec

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
    from fluxperf.cudagraph import CudaGraphRunner
    from fluxperf.export import compile_package, export_program, load_package
    from fluxperf.export_call import ExampleInputs

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
    from fluxperf.export_call import TransformerExportModule, VaeDecodeExportModule, transformer_example, vae_example
    from fluxperf.model_configs import dims_of_pipeline
    from fluxperf.models import build_pipeline
    from fluxperf.recipe import Recipe

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
    """What fluxperf.export._package does (same key, same cache), with a STEP marker between the parts."""
    from fluxperf import export_cache as ec
    from fluxperf.export import compile_package, export_program, inductor_configs_for, load_package, package_key

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
    from fluxperf.cudagraph import CudaGraphRunner

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
    from fluxperf.export import apply_export, remove_export
    from fluxperf.model_configs import dims_of_pipeline
    from fluxperf.shapes import transformer_inputs, vae_latents

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
}
CUDA_ONLY = {"linear_so_graph", "linear_user_graph", "vae", "flux_so_graph", "flux_fp32_graph", "pipeline"}


def run_stage(args) -> int:
    """Child: run one stage, print `RESULT <json>` last. Exceptions print their traceback and exit 3."""
    import faulthandler
    import traceback

    faulthandler.enable(all_threads=True)
    if args.hang_dump_s:
        faulthandler.dump_traceback_later(args.hang_dump_s, exit=False)  # a hang shows where it hangs
    os.chdir(ROOT)
    ctx = Ctx(args)
    ctx.work.mkdir(parents=True, exist_ok=True)
    step(f"start {args.stage} device={ctx.device} spec={args.spec} weights={ctx.weights}")
    try:
        res = STAGES[args.stage](ctx)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which records it as the stage's outcome
        traceback.print_exc()
        print("RESULT " + json.dumps({"exception": f"{type(exc).__name__}: {str(exc)[:2000]}"}), flush=True)
        return 3
    step("done")
    print("RESULT " + json.dumps(res, default=str), flush=True)
    return 0


# == parent: waves of subprocesses ======================================================================
def stage_command(stage: str, work, *, device="cuda", spec=None, weights="user", text_len=64, hang_dump_s=0):
    """The argv that runs one stage in a fresh interpreter with faulthandler on."""
    cmd = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "--stage", stage, "--work", str(work),
           "--device", device, "--weights", weights, "--text-len", str(text_len)]
    cmd += ["--spec", spec] if spec else []
    return cmd + (["--hang-dump-s", str(hang_dump_s)] if hang_dump_s else [])


def stage_env_vars(work) -> dict:
    env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONUNBUFFERED="1", TORCH_SHOW_CPP_STACKTRACES="1")
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(work) / "inductor"))  # fresh: nothing stale from earlier runs
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    return env


def parse_child(stage: str, rc: int | None, text: str, seconds: float) -> dict:
    """One stage's record: status, signal, last STEP, RESULT payload, output tail."""
    lines = text.splitlines()
    steps = [ln[5:] for ln in lines if ln.startswith("STEP ")]
    result = next((json.loads(ln[7:]) for ln in reversed(lines) if ln.startswith("RESULT ")), None)
    if rc is None:
        status = "timeout"
    elif rc < 0:
        status = f"killed by {signal.Signals(-rc).name}"
    elif rc == 0:
        status = "ok" if not (result or {}).get("problems") else "wrong results"
    else:
        status = "exception" if result and "exception" in result else f"exit {rc}"
    return {"stage": stage, "status": status, "rc": rc, "seconds": round(seconds, 1),
            "last_step": steps[-1] if steps else None, "result": result, "tail": "\n".join(lines[-60:])[-6000:]}


def run_wave(stages, args, work, limit_s: float, log) -> list[dict]:
    procs = {}
    for s in stages:
        f = tempfile.TemporaryFile(mode="w+")
        cmd = stage_command(s, work, device=args.device, spec=args.spec, weights=args.weights, text_len=args.text_len,
                            hang_dump_s=max(5, int(limit_s) - 8))
        env = stage_env_vars(work)
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", PARALLEL_COMPILE_THREADS)
        procs[s] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True), f,
                    time.perf_counter())
    records, deadline = [], time.perf_counter() + limit_s
    for s, (p, f, t0) in procs.items():
        try:
            rc = p.wait(timeout=max(0.1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # this stage's own process group only
            p.wait()
            rc = None
        f.seek(0)
        text = f.read()
        f.close()
        log.write(f"\n===== {s} (rc={rc}) =====\n{text}")
        rec = parse_child(s, rc, text, time.perf_counter() - t0)
        records.append(rec)
        print(f"[diag] {s:18s} {rec['status']:24s} {rec['seconds']:6.1f} s  last step: {rec['last_step']}", flush=True)
    return records


def gdb_backtrace(rec: dict, args, work, limit_s: float) -> str | None:
    """Re-run a stage that died of a signal under gdb (if present); return the tail with the native backtrace."""
    gdb = shutil.which("gdb")
    if not gdb or limit_s < 20:
        return None
    cmd = [gdb, "-q", "-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off",
           "-ex", "handle SIGPIPE SIGUSR1 SIGUSR2 SIG32 SIG33 SIG34 SIG35 SIG36 SIG37 SIG38 SIG39 SIG40 nostop noprint pass",
           "-ex", "run", "-ex", "bt 40", "-ex", "info threads", "-ex", "thread apply all bt 10", "--args",
           *stage_command(rec["stage"], work, device=args.device, spec=args.spec, weights=args.weights,
                          text_len=args.text_len)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s, env=stage_env_vars(work))
        text = p.stdout + p.stderr
        at = text.find("received signal")  # the crashing thread's backtrace follows; thread dumps after it
        return text[max(0, at - 200):][:12000] if at >= 0 else text[-12000:]
    except subprocess.TimeoutExpired as exc:
        return f"gdb timed out after {limit_s:.0f} s; partial: {str(exc.stdout or '')[-4000:]}"


def meaning(records: dict) -> list[str]:
    """Plain-language reading of the outcomes (see also the module docstring and MEANING)."""
    ok = {s for s, r in records.items() if r["status"] == "ok"}
    bad = {s for s, r in records.items() if r["status"] not in ("ok", "skipped")}
    notes = []
    if "linear_so" in bad:
        notes.append("AOTI itself fails on this machine (even weights-in-.so, no graph): toolchain/runtime problem, "
                     "not fluxperf's constant or graph handling. See env (gcc/nvcc/triton) and linear_so's tail.")
    if "linear_so" in ok and {"linear_user", "linear_copy"} & bad:
        notes.append("load_constants is the culprit (weights-in-.so works): use FLUXPERF_EXPORT_WEIGHTS=so "
                     f"(failed: {sorted({'linear_user', 'linear_copy'} & bad)}).")
    if {"linear_so", "linear_user"} <= ok and {"linear_so_graph", "linear_user_graph"} & bad:
        notes.append("CUDA-graph capture of an AOTI package fails: run the export rung with cudagraphs off "
                     "(recipe export.cudagraphs=False) until fixed.")
    if {"linear_user", "linear_user_graph"} <= ok and bad & {"flux_fp32", "flux_bf16", "vae"}:
        notes.append("the basic paths work; a FLUX-specific graph breaks: see the failing stage's last step.")
    if {"flux_fp32", "flux_fp32_graph", "vae"} <= ok and "pipeline" in bad:
        notes.append("packages work alone but not through apply_export/the pipeline: adapters, reload or teardown.")
    if "flux_so_graph" in ok and bad & {"flux_fp32_graph", "pipeline"}:
        notes.append("weights-in-.so works where user-managed weights fail: FLUXPERF_EXPORT_WEIGHTS=so is a workaround.")
    if not bad and set(records) >= set(MEANING):
        notes.append("every stage passed: the crash needs something this run does not have (the pytest process "
                     "state: earlier CUDA-graph tests, fixtures); run the GPU tests, which now isolate each build.")
    return notes


def run_all(args) -> int:
    from fluxperf.io import atomic_write_json

    t0 = time.perf_counter()
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="diag_export-"))
    wanted = set(args.only.split(",")) if args.only else None
    records: dict[str, dict] = {}
    with open(out_dir / "diag_export.log", "w") as log:
        for wave, wave_limit in zip(WAVES, WAVE_LIMIT_S):
            stages = [s for s in wave if (wanted is None or s in wanted)
                      and not (args.device == "cpu" and s in CUDA_ONLY)]
            left = args.budget_s - (time.perf_counter() - t0)
            if not stages:
                continue
            if left < 15:
                records.update({s: {"stage": s, "status": "skipped", "why": "time budget used up"} for s in stages})
                continue
            records.update({r["stage"]: r for r in run_wave(stages, args, work, min(wave_limit, left), log)})
        crashed = [r for r in records.values() if str(r["status"]).startswith("killed by")]
        gdb_rec = None
        if crashed and not args.no_gdb:
            rec = crashed[0]
            left = args.budget_s + 30 - (time.perf_counter() - t0)
            print(f"[diag] re-running {rec['stage']} under gdb ({left:.0f} s left)", flush=True)
            gdb_rec = {"stage": rec["stage"], "output": gdb_backtrace(rec, args, work, min(60.0, left))}
            log.write(f"\n===== gdb {rec['stage']} =====\n{gdb_rec['output']}")
    summary = {"script": "diag_export", "spec": args.spec, "device": args.device, "work": str(work),
               "total_s": round(time.perf_counter() - t0, 1), "stages": records, "gdb": gdb_rec,
               "meaning": meaning(records)}
    atomic_write_json(out_dir / "diag_export.json", summary)
    print(f"\n{'stage':18s} {'status':24s} {'sec':>7s}  {'last step':50s} tests")
    for s, r in records.items():
        print(f"{s:18s} {r['status']:24s} {r.get('seconds', ''):>7}  {(r.get('last_step') or '')[:50]:50s} "
              f"{MEANING.get(s, '')}")
    for note in summary["meaning"]:
        print(f"=> {note}")
    print(f"[diag] wrote {out_dir / 'diag_export.json'} and diag_export.log in {summary['total_s']} s")
    return 0 if all(r["status"] == "ok" for r in records.values()) else 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=sorted(STAGES), help="run this one stage here (child mode)")
    p.add_argument("--work", default=None, help="directory for packages and caches (default: a fresh temp dir)")
    p.add_argument("--out", default=None, help="where diag_export.json/.log go (default: $OUT, else .)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--spec", default="dev:1024x1024:1", help="variant:HxW:batch of the FLUX stages")
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--weights", default="user", choices=["user", "copy", "so"], help="weights mode of the pipeline stage")
    p.add_argument("--only", default=None, help="comma-separated stages to run (default: all)")
    p.add_argument("--budget-s", type=float, default=200.0, help="stages stop by then; gdb may use 30 s more")
    p.add_argument("--hang-dump-s", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-gdb", action="store_true")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.stage:
        if not args.work:
            args.work = tempfile.mkdtemp(prefix="diag_export-")
        return run_stage(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
