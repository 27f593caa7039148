#!/usr/bin/env bash
# One GPU call for tensor parallelism: the 2-GPU parity test (skipped on one GPU), then bench_tp.py
# (checkpoint written once under $CKPT; shard counts from $SHARDS, 1,2 by default). Logs under $OUT.
set -u
export PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv | tee "$OUT/gpu.txt"
timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -p no:cacheprovider -c /dev/null --rootdir . \
    --import-mode=importlib -q -x -rs packages/lorax-engine/tests/test_gpu_tp.py 2>&1 \
    | tee "$OUT/tests_tp.log" | tail -15
timeout "${BENCH_TIMEOUT:-380}" python3 packages/lorax-engine/benchmarks/bench_tp.py \
    --shards "${SHARDS:-1,2}" --ckpt-dir "${CKPT:-/tmp/lorax-bench-tp}" "$@" 2>&1 \
    | tee "$OUT/bench_tp.jsonl" | grep -v Warning
