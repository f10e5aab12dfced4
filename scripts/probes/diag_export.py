#!/usr/bin/env python3
"""Pinpoint where the AOTInductor export path crashes: every stage runs in its OWN subprocess.

A segfault (or hang) then kills only that stage; its exit status (negative: the signal), the last `STEP` it
reached and the tail of its output (faulthandler on: `python -X faulthandler`, PYTHONFAULTHANDLER=1) are recorded.
Stages (the letters of the brief):
  env               versions, compilers, AOTInductor settings (never crashes; context for the rest)
  a  linear_so      nn.Linear-GELU-Linear (+ a buffer): export, AOTI build with weights in the .so, load, run
  b  linear_user    same, built without weights + load_constants(user_managed=True)      (the rung's default)
  b' linear_copy    same, built without weights + load_constants(user_managed=False)     (the package copies)
  e' linear_so_graph / linear_user_graph: the linear packages replayed under fluxperf.steps.export.cudagraph.CudaGraphRunner
  c  flux_fp32      tiny FLUX transformer fp32 (weights='user'), no CUDA graph
  d  flux_bf16      same in bf16
  f  vae            the VAE decoder fp32: plain run, then under the CUDA-graph runner
  s  flux_so_graph  tiny FLUX fp32 built WITH its weights (weights='so'), under the CUDA-graph runner (the fallback)
  e  flux_fp32_graph  stage c's package (cache hit) under the CUDA-graph runner
  g  pipeline       public apply_export on the tiny dev pipeline (CUDA graphs), pipeline call, remove, cached re-apply
  w  weights_replaced  apply_export, then the weights replaced (load_state_dict(assign=True)): followed (user),
                    refused (so)
Stages run with the system libstdc++ preloaded (fluxperf.steps.export.loader.preload_env; --no-preload to run without:
a package that needs it is then refused with LibstdcxxPreloadError instead of crashing the stage).
Stages run in three waves (linear+env, FLUX builds, cache-hit stages) within a time budget (default 200 s, +30 s for gdb).
If a stage died of a signal and gdb exists, that stage is re-run once under gdb for a native backtrace.

Run on the GPU machine:   source scripts/tiers/device-env.sh; python3 scripts/probes/diag_export.py
Writes $OUT/diag_export.json (summary, tails) and $OUT/diag_export.log (all output); prints a final table.
One stage by hand:        python3 scripts/probes/diag_export.py --stage linear_user --work /tmp/diag   (CPU: --device cpu)
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

ROOT = Path(__file__).resolve().parents[2]
WAVES = [["env", "linear_so", "linear_user", "linear_copy", "linear_so_graph", "linear_user_graph"],
         ["flux_fp32", "flux_bf16", "vae", "flux_so_graph"],
         ["flux_fp32_graph", "pipeline", "weights_replaced"]]
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
    "weights_replaced": "weights replaced after export: followed (user) / refused (so)",
}
# the stages themselves live beside this script (one idea per file): imported by path, so this module also loads
# through importlib (tests/gpu/test_export_gpu.py) without scripts/ on sys.path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag_export_stages import CUDA_ONLY, STAGES, Ctx, step  # noqa: E402


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


def stage_env_vars(work, *, preload: bool = True) -> dict:
    """The stage's environment: faulthandler, a fresh Inductor cache and (preload=True) the system libstdc++
    preloaded, without which packages that carry their own libstdc++ crash on load (fluxperf.steps.export.loader)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from fluxperf.steps.export.loader import preload_env

    env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONUNBUFFERED="1", TORCH_SHOW_CPP_STACKTRACES="1")
    env = preload_env(env) if preload else {k: v for k, v in env.items() if k != "LD_PRELOAD"}
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
        env = stage_env_vars(work, preload=not args.no_preload)
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
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s,
                           env=stage_env_vars(work, preload=not args.no_preload))
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
    p.add_argument("--no-preload", action="store_true",
                   help="run the stages WITHOUT the system libstdc++ preloaded (reproduces the loader crash, which "
                        "fluxperf now refuses with LibstdcxxPreloadError)")
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
