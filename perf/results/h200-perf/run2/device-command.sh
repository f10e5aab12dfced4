#!/usr/bin/env bash
# Device command 2 (H200 x2): the six perf baselines (heat-soaked calibration), the compile compare demo and the
# GPU numerics/export tier, spread over 4 GPUs; from a clean `git archive HEAD`. $1 = commit, $2 = watchdog s.
set -u
SRC=$PWD; R=/tmp/r; rm -rf $R; mkdir -p $R; tar -xf $SRC/.gl/head.tar -C $R; cp -r $SRC/.whl $R/; cd $R
source scripts/device-env.sh; rm -rf .whl   # wheels installed once; the tier scripts must not reinstall concurrently
export FLUXPERF_GIT_COMMIT=$1 NCCL_NVLS_ENABLE=0
F=$R/fluxperf-out; mkdir -p $F; env | grep -E "LD_PRELOAD|PYTHONPATH" > $F/env.log
job(){ local gpu=$1; shift; ( export CUDA_VISIBLE_DEVICES=$gpu; eval "$*" ) > $F/gpu$gpu.log 2>&1; }
K="-- -k 'compile and not fused'"
T="tests/gpu/test_numerics_gpu.py tests/gpu/test_export_gpu.py tests/gpu/test_calibration_gpu.py tests/gpu/test_cudagraph_gpu.py"
job 0 "OUT=$F/compile scripts/perf-tier.sh compile --baseline; echo rc=\$?; OUT=$F/same scripts/perf-tier.sh compile --compare $K; echo rc=\$?; FLUXPERF_INJECT_SLOWDOWN=0.05 OUT=$F/slow scripts/perf-tier.sh compile --compare $K; echo rc=\$?; OUT=$F/base scripts/perf-tier.sh base --baseline; echo rc=\$?" & p0=$!
job 1 "OUT=$F/attention scripts/perf-tier.sh attention --baseline; echo rc=\$?; OUT=$F/float8 scripts/perf-tier.sh float8 --baseline; echo rc=\$?; OUT=$F/flags scripts/perf-tier.sh flags --baseline; echo rc=\$?" & p1=$!
( sleep ${2:-560}; pkill -f "python3 -m pytest" ) & wd=$!
wait $p0 $p1; kill $wd 2>/dev/null
for f in $F/gpu*.log; do echo "== $f"; grep -E "rc=|exit [0-9]+ after|outcome|passed|failed" $f | tail -12; done
tar -czf $OUT/results2.tar.gz -C $R fluxperf-out baselines/nvidia-h200 2>/dev/null; ls -la $OUT
