#!/usr/bin/env bash
# One GPU call: engine GPU tests, then the engine benchmark with the HF baseline. Logs under $OUT.
set -u
export PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv | tee "$OUT/gpu.txt"
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -p no:cacheprovider -c /dev/null --rootdir . \
    --import-mode=importlib -q -x packages/lorax-engine/tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -15
timeout "${BENCH_TIMEOUT:-330}" python3 packages/lorax-engine/benchmarks/bench_engine.py "$@" 2>&1 \
    | tee "$OUT/bench.jsonl" | grep -v Warning
