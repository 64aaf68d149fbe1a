#!/usr/bin/env bash
# Variants of the training step on a GPU, one process each (compile caches and cuDNN autotuning
# do not leak between them). One summary line per variant; kernel tables under $OUT (or /tmp).
# Usage: bash benchmarks/gpu_sweep.sh [size] [batch]
size=${1:-128}; batch=${2:-64}; out=${OUT:-/tmp}
run() { name=$1; shift; timeout 170 python3 benchmarks/profile_step.py --size "$size" --batch "$batch" --steps 5 --table "$out/table_$name.txt" "$@" 2>"$out/err_$name.txt" | grep img/s || { echo "$name FAILED:"; tail -3 "$out/err_$name.txt"; }; }
run eager_nchw
run eager_cl --set train.channels_last=true
run eager_nchw_meanpool --downsample mean
run compile_nchw --compile
batch=256 run eager_nchw_b256
