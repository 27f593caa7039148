#!/usr/bin/env bash
# The GPU test suite and benchmark drivers in one call: the `gpu`-marked tests, the engine (#4),
# structured output (#7), quantized bases (#10) and the end-to-end lorax-bench sweep (#9). From
# the repository root, on the H200 machine:
#
#     bash benchmarks/gpu/run.sh [kernel-tests] [engine-tests] [gpu-tests] [kernels] [engine]
#         [structured] [quant] [e2e-saturation] [e2e-latency] [e2e]
#
# (none: structured, quant). kernel-tests and engine-tests run every `gpu`-marked test of
# lorax-kernels (~7 min: one call of its own) and of lorax-engine (~1-2 min); gpu-tests is both
# (the interpreter tests, which CI runs, are left out). kernels runs the kernel benchmarks whose
# numbers pick defaults: decode attention with its partition sweep, SGMV, the quantized GEMVs and
# their tiling sweep, and PDL on the GEMV chain (bench_pdl.py). engine runs bench_engine.py
# (batch 1, 16, 64, 256) and profile_step.py. The e2e sweep is two phases, each one engine
# start-up and at most E2E_TIMEOUT seconds, so that each fits one 10-minute GPU command on its
# own: e2e-saturation (rate inf for base, N = 1, 8, 64, 512, 2000) and e2e-latency (N = 64, 2000
# at 50 % and 80 % of their saturation); e2e runs both in turn (where no such limit applies).
#
# Installs the carried wheels (.whl/structured: llguidance and jsonschema; .whl-bench: the
# gateway's and client's litestar, uvicorn, pydantic, opentelemetry...; .whl-bnb: bitsandbytes,
# when carried) into /tmp/site, runs each driver under its own time limit and writes its output
# under $OUT: kernel-tests.txt, engine-tests.txt, kernels.md, quant-sweep.md, engine.jsonl,
# profile.jsonl, structured.jsonl, quant.jsonl, e2e-<phase>/{sweep.json,sweep.png,engine.log,
# gateway.log,bench.log}.
# Limits (seconds): KERNEL_TESTS_TIMEOUT (560), ENGINE_TESTS_TIMEOUT (300), KERNELS_TIMEOUT (420),
# ENGINE_TIMEOUT (240), STRUCTURED_TIMEOUT (120),
# QUANT_TIMEOUT (180), E2E_TIMEOUT (500 per phase); E2E_SWEEP replaces the phase's lorax-bench
# sweep (e2e.py's PHASES); E2E_LORA_DTYPE=fp8 serves the adapters from fp8 slot tables.
set -u -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
which=("$@")
[ ${#which[@]} -eq 0 ] && which=(structured quant)
# gpu-tests: both test phases.
expanded=()
for w in "${which[@]}"; do
    if [ "$w" = gpu-tests ]; then expanded+=(kernel-tests engine-tests); else expanded+=("$w"); fi
done
which=("${expanded[@]}")

wheels=(.whl/structured/*.whl)
[[ " ${which[*]} " == *" e2e"* ]] && wheels+=(.whl-bench/*.whl)
[ -d .whl-bnb ] && wheels+=(.whl-bnb/*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${wheels[@]}" || exit 1
# Absolute: some drivers run from their own directory.
pkgs=$PWD/packages
export PYTHONPATH=/tmp/site:$pkgs/lorax-kernels/src:$pkgs/lorax-engine/src:$pkgs/lorax-gateway/src:$pkgs/lorax-client/src
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem --format=csv,noheader

status=0
for w in "${which[@]}"; do
    echo "=== $w $(date -u +%T)"
    case $w in
    kernel-tests|engine-tests)
        # -c /dev/null: the GPU machine's pytest lacks the dev plugins pyproject.toml configures;
        # --confcutdir keeps the root conftest.py from being imported twice. Test files that
        # need the gateway's wheels (not installed here) fail to collect; the others still run.
        package=lorax-kernels limit=${KERNEL_TESTS_TIMEOUT:-560}
        [ "$w" = engine-tests ] && package=lorax-engine limit=${ENGINE_TESTS_TIMEOUT:-300}
        timeout "$limit" python3 -m pytest -p no:cacheprovider -c /dev/null \
            --rootdir . --confcutdir packages --import-mode=importlib -q -rfEs -m gpu \
            --continue-on-collection-errors -W ignore::pytest.PytestUnknownMarkWarning \
            "packages/$package/tests" 2>&1 | tee "$OUT/$w.txt" | tail -40 ;;
    kernels)
        timeout "${KERNELS_TIMEOUT:-420}" bash -c "
            cd packages/lorax-kernels/benchmarks &&
            python3 run_all.py decode sgmv greedy quant pdl | tee '$OUT/kernels.md' &&
            python3 bench_quant_gemv.py --sweep-only | tee '$OUT/quant-sweep.md'" ;;
    engine)
        timeout "${ENGINE_TIMEOUT:-240}" bash -c "
            python3 packages/lorax-engine/benchmarks/bench_engine.py --batches 1,16,64,256 \
                | tee '$OUT/engine.jsonl' &&
            cd packages/lorax-engine/benchmarks &&
            python3 profile_step.py --batches 1,64,256 | tee '$OUT/profile.jsonl'" ;;
    structured)
        timeout "${STRUCTURED_TIMEOUT:-120}" python3 packages/lorax-engine/benchmarks/bench_structured.py \
            2>&1 | tee "$OUT/structured.jsonl" ;;
    quant)
        timeout "${QUANT_TIMEOUT:-180}" python3 packages/lorax-engine/benchmarks/bench_quant.py \
            2>&1 | tee "$OUT/quant.jsonl" ;;
    e2e|e2e-saturation|e2e-latency)
        phases=(saturation latency)
        [ "$w" != e2e ] && phases=("${w#e2e-}")
        for phase in "${phases[@]}"; do
            # SIGINT first: lorax-bench then writes what it measured and the driver stops the
            # servers. E2E_SWEEP: lorax-bench arguments replacing the phase's sweep (split on
            # blanks).
            # shellcheck disable=SC2086
            timeout -s INT -k 20 "${E2E_TIMEOUT:-500}" python3 benchmarks/gpu/e2e.py \
                --phase "$phase" --out "$OUT/e2e-$phase" --lora-dtype "${E2E_LORA_DTYPE:-auto}" \
                ${E2E_SWEEP:+-- $E2E_SWEEP} || status=1
        done ;;
    *)
        echo "unknown driver $w (kernel-tests, engine-tests, gpu-tests, kernels, engine, structured, quant, e2e-saturation, e2e-latency, e2e)"; false ;;
    esac || status=1
done
echo "=== done $(date -u +%T) status $status"
exit $status
