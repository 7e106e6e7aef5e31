#!/bin/bash
# The decode-row work of one H200 session, as two device calls (NOTES.md Session 14): call 1
# `bash benchmarks/kernels/experiments/decode_round.sh tune`, copy its $OUT/td1/NVIDIA_H200.json
# into experts/moe/kernels/configs/ on the machine that launched it, then call 2
# `bash benchmarks/kernels/experiments/decode_round.sh bench`. Exits 3 on any GPU but an H200. The
# GPU tests get 240 s: a staged kernel that never finishes (a wait nobody releases) must not eat
# the call. `one` is the short form for a session with less device time left: the decode tests,
# `tune_decode --kinds staged` (the checked-in entry timed beside it) on the four missed buckets,
# and the bench at T 1 and 8, each step under a timeout; it runs on any GPU (its own config file).
G=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "GPU: $G"; echo "$G" | grep -q H200 || [ "$1" = one ] || exit 3
export PYTHONPATH=.
date -u +%H:%M:%S
if [ "$1" = one ]; then  # one call of at most 600 s: the staged path's tests, tuning, the decode rows
  timeout 120 python -m pytest tests/kernels/test_decode.py --confcutdir=tests/kernels -q -x 2>&1 | tail -5 | tee $OUT/tests.txt
  RC=${PIPESTATUS[0]}; date -u +%H:%M:%S
  if [ "$RC" = 0 ]; then
    timeout 150 python -m benchmarks.kernels.tune_decode --out $OUT/td8 --kinds staged --shapes qwen3-30b-a3b olmoe-1b-7b --tokens 8 2>&1 | grep -v Warn | tail -4 > $OUT/td8.log
    cp $OUT/td8/NVIDIA_H*.json experts/moe/kernels/configs/; date -u +%H:%M:%S
    timeout 110 python -m benchmarks.kernels.tune_decode --out $OUT/td1 --kinds staged --shapes deepseek-v3 mixtral-8x7b-tp2 --tokens 1 2>&1 | grep -v Warn | tail -4 > $OUT/td1.log
    cp $OUT/td1/NVIDIA_H*.json experts/moe/kernels/configs/; date -u +%H:%M:%S
  fi
  python -m benchmarks.kernels.bench_moe --out $OUT/bench --tokens 1 8 2>&1 | tail -40 > $OUT/bench.log
  date -u +%H:%M:%S
elif [ "$1" = tune ]; then
  timeout 240 python -m pytest tests/kernels/test_decode.py tests/kernels/test_route_align.py tests/kernels/test_moe_layer.py --confcutdir=tests/kernels -q -x 2>&1 | tail -5 | tee $OUT/tests.txt
  RC=${PIPESTATUS[0]}; KINDS="decode staged"; [ "$RC" = 0 ] || KINDS=decode  # a failing staged path is not tuned
  date -u +%H:%M:%S
  python -m benchmarks.kernels.tune_decode --out $OUT/td8 --kinds $KINDS --shapes qwen3-30b-a3b olmoe-1b-7b --tokens 8 2>&1 | grep -v Warn | tail -4 > $OUT/td8.log
  cp $OUT/td8/NVIDIA_H200.json experts/moe/kernels/configs/NVIDIA_H200.json; date -u +%H:%M:%S
  python -m benchmarks.kernels.tune_decode --out $OUT/td1 --kinds $KINDS --shapes deepseek-v3 mixtral-8x7b-tp2 --tokens 1 2>&1 | grep -v Warn | tail -4 > $OUT/td1.log
  date -u +%H:%M:%S
else
  python -m benchmarks.kernels.tune_flags --out $OUT/flags --tokens 1 8 2>&1 | grep -v Warn | tail -20 > $OUT/tune_flags.log
  cp $OUT/flags/NVIDIA_H200.json experts/moe/kernels/configs/NVIDIA_H200.json
  date -u +%H:%M:%S
  python -m benchmarks.kernels.bench_moe --out $OUT/bench --tokens 1 8 2>&1 | tail -40 > $OUT/bench.log
  date -u +%H:%M:%S
  for c in "qwen3-30b-a3b 8" "olmoe-1b-7b 8" "deepseek-v3 1"; do python -m benchmarks.kernels.experiments.profile_decode $c 2>&1 | grep -v Warn | tail -15; done > $OUT/profile.txt
  date -u +%H:%M:%S
fi
