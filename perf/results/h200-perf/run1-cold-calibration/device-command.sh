#!/usr/bin/env bash
# Device command 1 (H200 x4): perf baselines base/compile/attention/float8 in parallel, one group per GPU, plus the
# compile compare demo (same code, then FLUXPERF_INJECT_SLOWDOWN=0.05) on GPU 1. Runs from a clean `git archive HEAD`.
set -u
SRC=$PWD; R=/tmp/r; rm -rf $R; mkdir -p $R; tar -xf $SRC/.gl/head.tar -C $R; cp -r $SRC/.whl $R/; cd $R
source scripts/device-env.sh; rm -rf .whl   # wheels installed once; the tier scripts must not reinstall concurrently
export FLUXPERF_GIT_COMMIT=$1 NCCL_NVLS_ENABLE=0
F=$R/fluxperf-out; mkdir -p $F
{ nvidia-smi -L; python3 -c "from fluxperf.env import gpu_identity as g; import torch; print([g(i).to_dict() for i in range(torch.cuda.device_count())])"; } > $F/identity.log 2>&1
job(){ local gpu=$1; shift; ( export CUDA_VISIBLE_DEVICES=$gpu; eval "$*" ) > $F/gpu$gpu.log 2>&1; }
K="-- -k 'compile and not fused'"
job 0 "OUT=$F/base scripts/perf-tier.sh base --baseline" & p0=$!
job 1 "OUT=$F/compile scripts/perf-tier.sh compile --baseline; echo rc=\$?; OUT=$F/same scripts/perf-tier.sh compile --compare $K; echo rc=\$?; FLUXPERF_INJECT_SLOWDOWN=0.05 OUT=$F/slow scripts/perf-tier.sh compile --compare $K; echo rc=\$?" & p1=$!
job 2 "OUT=$F/attention scripts/perf-tier.sh attention --baseline" & p2=$!
job 3 "OUT=$F/float8 scripts/perf-tier.sh float8 --baseline" & p3=$!
( sleep ${2:-570}; pkill -f "python3 -m pytest" ) & wd=$!
wait $p0 $p1 $p2 $p3; kill $wd 2>/dev/null
tail -3 $F/gpu*.log
tar -czf $OUT/results1.tar.gz -C $R fluxperf-out baselines/nvidia-h200 2>/dev/null; ls -la $OUT
