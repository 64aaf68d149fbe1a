#!/usr/bin/env bash
# The GPU checks of one session, in order of importance; each step's output goes to $OUT (or /tmp).
# CUDA tests, data-parallel tests (gloo) on the GPU host, 1-GPU throughput of the engine under
# torchrun, and engine vs seed-style loop.
#   bash benchmarks/gpu_checks.sh
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_distributed.py 2>&1 | tail -15 | tee "$out/tests.txt"
timeout 90 python3 benchmarks/bench_distributed.py --nproc 1 --size 128 --batch 64 --steps 100 --warmup 10 2>&1 | grep "img/s" | tee "$out/bench_distributed.txt"
timeout 110 python3 benchmarks/bench_engine.py --size 128 --batch 64 --steps 100 --images 1280 --repeats 1 2>&1 | tail -6 | tee "$out/bench_engine.txt"
