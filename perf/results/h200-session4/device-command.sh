#!/usr/bin/env bash
# Device call (H200 x2). $1 commit, $2 watchdog s, then jobs "GPUS|CORES|bash text" (GPUS e.g. 0 or 0,1; CORES a
# taskset list, e.g. 0-23), all started at once, each in its own process group; the watchdog kills every group.
set -u
SRC=$PWD; R=/tmp/r; rm -rf $R; mkdir -p $R; tar -xf $SRC/.gl/head.tar -C $R; cp -r $SRC/.whl $R/; cd $R
source scripts/tiers/device-env.sh; rm -rf .whl
export FLUXPERF_GIT_COMMIT=$1 NCCL_NVLS_ENABLE=0 FLUXPERF_EXPORT_PACKAGES=/tmp/fx-export
F=$R/fluxperf-out/res; mkdir -p $F; WD=$2; shift 2
{ date; nproc; nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv; env | grep -E "LD_PRELOAD"; } > $F/env.log 2>&1
pids=(); i=0
for job in "$@"; do
  g=${job%%|*}; rest=${job#*|}; c=${rest%%|*}; cmd=${rest#*|}
  echo "job$i gpus=$g cores=$c: $cmd" >> $F/env.log
  setsid bash -c "export CUDA_VISIBLE_DEVICES=$g; cd $R; taskset -c $c bash -c '$cmd'" > $F/job$i.log 2>&1 & pids+=($!)
  i=$((i+1))
done
( sleep $WD; for p in "${pids[@]}"; do kill -- -$p 2>/dev/null; done; echo WATCHDOG >> $F/env.log ) & wd=$!
wait "${pids[@]}"; kill $wd 2>/dev/null; date >> $F/env.log
for f in $F/job*.log; do echo "== $f"; grep -E "rc=|exit [0-9]+ after|outcome|passed|failed|exit status|REGRESSION|PASS|wall" $f | tail -14; done
tail -4 $F/env.log
tar -czf $OUT/res.tar.gz -C $R fluxperf-out/res $(cd $R; ls -d baselines/nvidia-h200* 2>/dev/null) --exclude='*.pt2' 2>/dev/null; ls -la $OUT
