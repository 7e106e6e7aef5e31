#!/bin/bash
# The decode-row work of one H200 session, as two device calls (NOTES.md Session 14): call 1
# `bash benchmarks/kernels/experiments/decode_round.sh tune`, copy its $OUT/td1/NVIDIA_H200.json
# into experts/moe/kernels/configs/ on the machine that launched it, then call 2
# `bash benchmarks/kernels/experiments/decode_round.sh bench`. Exits 3 on any GPU but an H200. The
# GPU tests get 240 s: a staged kernel that never finishes (a wait nobody releases) must not eat
# the call. `one` is the short form for a session with less device time left: the decode tests,
# `tune_decode --kinds staged` (the checked-in entry timed beside it) on the four missed buckets,
# and the bench at T 1 and 8, each step under a timeout; it runs on any GPU (its own config file),
# as do `short` and `routed` (the gate/up GEMM that routes its own tokens: tests, tune_flags, bench).
G=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "GPU: $G"; echo "$G" | grep -q H200 || [ "$1" = one ] || [ "$1" = short ] || [ "$1" = routed ] || [ "$1" = routed-full ] || [ "$1" = ranked ] || [ "$1" = tma ] || [ "$1" = prefetch ] || exit 3
export PYTHONPATH=.
stamp() { date -u +%H:%M:%S; }
gpu_tests() {  # LIMIT_S TEST_FILE...: their status is the function's
  local limit=$1; shift
  timeout "$limit" python -m pytest "$@" --confcutdir=tests/kernels -q -x 2>&1 | tail -5 | tee $OUT/tests.txt
  return "${PIPESTATUS[0]}"
}
tune_bucket() {  # KINDS LIMIT_S (0: none) NAME T SHAPE...: tuned, then copied into the configs
  local kinds=$1 limit=$2 name=$3 t=$4; shift 4
  timeout "$limit" python -m benchmarks.kernels.tune_decode --out /tmp/$name --kinds $kinds --shapes "$@" --tokens $t 2>&1 | grep -v Warn | tail -4 > $OUT/$name.log
  cp /tmp/$name/NVIDIA_H*.json experts/moe/kernels/configs/; cp /tmp/$name/NVIDIA_H*.json $OUT/; stamp
}
tune_flags_at() {  # LIMIT_S (0: none) TUNE_FLAGS_ARG...: tuned, then copied into the configs
  local limit=$1; shift
  timeout "$limit" python -m benchmarks.kernels.tune_flags --out /tmp/flags "$@" 2>&1 | grep -v Warn | tail -20 > $OUT/tune_flags.log
  cp /tmp/flags/NVIDIA_H*.json experts/moe/kernels/configs/; cp /tmp/flags/NVIDIA_H*.json $OUT/; stamp
}
bench_decode() {  # the decode rows (T 1 and 8) into $OUT/bench
  python -m benchmarks.kernels.bench_moe --out $OUT/bench --tokens 1 8 2>&1 | tail -40 > $OUT/bench.log
  stamp
}
tune_buckets() {  # KINDS LIMIT_T8_S LIMIT_T1_S: the four buckets of the missed decode rows
  tune_bucket "$1" "$2" td8 8 qwen3-30b-a3b olmoe-1b-7b
  tune_bucket "$1" "$3" td1 1 deepseek-v3 mixtral-8x7b-tp2
}
stamp
if [ "$1" = one ]; then  # one call of at most 600 s: the staged path's tests, tuning, the decode rows
  gpu_tests 120 tests/kernels/test_decode.py && tune_buckets staged 150 110
  bench_decode
elif [ "$1" = short ]; then  # `one` without the tests (they passed on an H100), then ROUTE_WARPS at T=8 (at most 8 files back)
  tune_buckets staged 150 110
  tune_flags_at 120 --shapes qwen3-30b-a3b olmoe-1b-7b --tokens 8
  bench_decode
elif [ "$1" = routed ] || [ "$1" = routed-full ]; then  # ROUTE_IN_GEMM (NOTES Session 17): its GPU tests, tune_flags at the aligned decode buckets, the decode rows (routed-full: H200 only, every row)
  [ "$1" = routed-full ] && ! echo "$G" | grep -q H200 && exit 3
  gpu_tests 150 tests/kernels/test_routed_gate_up.py tests/kernels/test_moe_layer.py tests/kernels/test_grouped_gemm.py && tune_flags_at 300 --shapes qwen3-30b-a3b olmoe-1b-7b deepseek-v3 --tokens 1 8 --rounds 5
  if [ "$1" = routed ]; then bench_decode; else python -m benchmarks.kernels.bench_moe --out $OUT/bench 2>&1 | tail -5 > $OUT/bench.log; stamp; fi
elif [ "$1" = ranked ]; then  # the routed gate/up routing by counting (NOTES Session 18): tests, tune_routed --which ranked, the decode rows, a timeline (any GPU)
  if gpu_tests 150 tests/kernels/test_routed_gate_up.py tests/kernels/test_moe_layer.py; then
    timeout 240 python -m benchmarks.kernels.tune_routed --out /tmp/tr --which ranked --shapes qwen3-30b-a3b olmoe-1b-7b --tokens 8 2>&1 | grep "T=" > $OUT/tune_routed.log
    cp /tmp/tr/tune_routed.json $OUT/; cp /tmp/tr/NVIDIA_H*.json experts/moe/kernels/configs/; cp /tmp/tr/NVIDIA_H*.json $OUT/; stamp
  fi
  bench_decode
  mkdir -p /tmp/trc; for s in qwen3-30b-a3b olmoe-1b-7b; do python -m benchmarks.kernels.experiments.profile_decode $s 8 --trace /tmp/trc 2>&1 | grep -v Warn | tail -12; done > $OUT/profile.txt
elif [ "$1" = tma ]; then  # (NOTES Sessions 18-19) the routed gate/up's weight rows in 1 KB runs (BLOCK_K 512), then its weight tiles through TMA: tests, tune_routed --which gate_up_wide gate_up_tma, the decode rows (any GPU)
  if gpu_tests 120 tests/kernels/test_routed_gate_up.py; then
    timeout 300 python -m benchmarks.kernels.tune_routed --out /tmp/tr --which gate_up_wide gate_up_tma --shapes qwen3-30b-a3b olmoe-1b-7b deepseek-v3 --tokens 1 8 2>&1 | grep "T=" > $OUT/tune_routed.log
    cp /tmp/tr/tune_routed.json $OUT/; cp /tmp/tr/NVIDIA_H*.json experts/moe/kernels/configs/; cp /tmp/tr/NVIDIA_H*.json $OUT/; stamp
  fi
  bench_decode
elif [ "$1" = prefetch ]; then  # down's programs prefetch their W2 tile (NOTES Session 18): tests, tune_routed --which prefetch, the decode rows (any GPU)
  if gpu_tests 150 tests/kernels/test_routed_down.py tests/kernels/test_moe_layer.py; then
    timeout 240 python -m benchmarks.kernels.tune_routed --out /tmp/tr --which prefetch --shapes qwen3-30b-a3b olmoe-1b-7b deepseek-v3 --tokens 1 8 2>&1 | grep "T=" > $OUT/tune_routed.log
    cp /tmp/tr/tune_routed.json $OUT/; cp /tmp/tr/NVIDIA_H*.json experts/moe/kernels/configs/; cp /tmp/tr/NVIDIA_H*.json $OUT/; stamp
  fi
  bench_decode
elif [ "$1" = tune ]; then  # a failing staged path is not tuned
  if gpu_tests 240 tests/kernels/test_decode.py tests/kernels/test_route_align.py tests/kernels/test_moe_layer.py
  then tune_buckets "decode staged" 0 0; else tune_buckets decode 0 0; fi
else
  tune_flags_at 0 --tokens 1 8
  bench_decode
  for c in "qwen3-30b-a3b 8" "olmoe-1b-7b 8" "deepseek-v3 1"; do python -m benchmarks.kernels.experiments.profile_decode $c 2>&1 | grep -v Warn | tail -15; done > $OUT/profile.txt
  stamp
fi
