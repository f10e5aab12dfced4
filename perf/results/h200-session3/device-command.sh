#!/usr/bin/env bash
# Device call (H200 x2). $1 commit, $2 watchdog s, $3 GPU0 job, $4 GPU1 job (bash text, run in the repo copy).
# GPU0 job on 3/4 of the cores, GPU1 job on the rest (taskset: a compile on one GPU must not starve the other's host).
set -u
SRC=$PWD; R=/tmp/r; rm -rf $R; mkdir -p $R; tar -xf $SRC/.gl/head.tar -C $R; cp -r $SRC/.whl $R/; cd $R
source scripts/tiers/device-env.sh; rm -rf .whl
export FLUXPERF_GIT_COMMIT=$1 NCCL_NVLS_ENABLE=0 FLUXPERF_EXPORT_PACKAGES=/tmp/fx-export
F=$R/fluxperf-out/res; mkdir -p $F
N=$(nproc); A=$((N*3/4))
{ date; nproc; nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv; du -sh /tmp/fx-export 2>/dev/null; env | grep -E "LD_PRELOAD"; } > $F/env.log 2>&1
setsid bash -c "export CUDA_VISIBLE_DEVICES=0; cd $R; taskset -c 0-$((A-1)) bash -c '$3'" > $F/gpu0.log 2>&1 & p0=$!
[ -n "${4:-}" ] && { setsid bash -c "export CUDA_VISIBLE_DEVICES=1; cd $R; taskset -c $A-$((N-1)) bash -c '$4'" > $F/gpu1.log 2>&1 & p1=$!; }
( sleep $2; kill -- -$p0 2>/dev/null; [ -n "${p1:-}" ] && kill -- -$p1 2>/dev/null; echo WATCHDOG >> $F/env.log ) & wd=$!
wait $p0 ${p1:-}; kill $wd 2>/dev/null
for f in $F/gpu*.log; do echo "== $f"; grep -E "rc=|exit [0-9]+ after|outcome|passed|failed|exit status|REGRESSION|PASS" $f | tail -14; done
tail -3 $F/env.log
tar -czf $OUT/res.tar.gz -C $R fluxperf-out/res $(cd $R; ls -d baselines/nvidia-h200 2>/dev/null) --exclude='*.pt2' 2>/dev/null; ls -la $OUT
