#!/usr/bin/env bash
# Device command 3 (H200 x2): export perf baseline + the GPU tier (numerics with the sm90 family fallback, export,
# CUDA graphs, calibration, issue-13 GPU tests) + a same-code compile compare after the dynamic-shapes change;
# from a clean `git archive HEAD`. $1 = commit, $2 = watchdog s.
set -u
SRC=$PWD; R=/tmp/r; rm -rf $R; mkdir -p $R; tar -xf $SRC/.gl/head.tar -C $R; cp -r $SRC/.whl $R/; cd $R
source scripts/device-env.sh; rm -rf .whl
export FLUXPERF_GIT_COMMIT=$1 NCCL_NVLS_ENABLE=0
F=$R/fluxperf-out; mkdir -p $F; { env | grep -E "LD_PRELOAD"; python3 -m fluxperf doctor; } > $F/doctor.log 2>&1
job(){ local gpu=$1; shift; ( export CUDA_VISIBLE_DEVICES=$gpu; eval "$*" ) > $F/gpu$gpu.log 2>&1; }
K="-- -k 'compile and not fused'"
T1="tests/gpu/test_numerics_gpu.py tests/gpu/test_calibration_gpu.py tests/gpu/test_cudagraph_gpu.py tests/gpu/test_recipes_gpu.py tests/gpu/test_recipe_space_gpu.py tests/gpu/test_attention_gpu.py"
job 0 "OUT=$F/same scripts/perf-tier.sh compile --compare $K; echo rc=\$?; OUT=$F/export scripts/perf-tier.sh export --baseline; echo rc=\$?; OUT=$F/tier0 bash scripts/gpu-tier.sh tests/gpu/test_export_gpu.py; echo rc=\$?" & p0=$!
job 1 "OUT=$F/tier1 bash scripts/gpu-tier.sh $T1; echo rc=\$?" & p1=$!
( sleep ${2:-540}; pkill -f "python3 -m pytest" ) & wd=$!
wait $p0 $p1; kill $wd 2>/dev/null
for f in $F/gpu*.log; do echo "== $f"; grep -E "rc=|exit [0-9]+ after|outcome|passed|failed|exit status" $f | tail -12; done
tar -czf $OUT/results3.tar.gz -C $R fluxperf-out baselines/nvidia-h200 2>/dev/null; ls -la $OUT
