#!/usr/bin/env bash
# Download the wheels run.sh carries to the GPU machine (which has no package index), pinned to
# the versions of uv.lock, for CPython 3.12 on manylinux x86-64. From the repository root, on a
# machine that reaches PyPI; both folders are git-ignored (.gitignore, .git/info/exclude):
#
#     bash benchmarks/gpu/fetch_wheels.sh      # ~12 MiB in .whl/structured and .whl-bench
#
# Only what the GPU image lacks (or has too old): its own numpy, torch, transformers, httpx,
# anyio, click, rich, pyyaml, attrs, requests, uvloop, matplotlib and tqdm are used as they are.
set -euo pipefail
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$@"
}
# The engine's constrained decoding (every driver imports it).
download .whl/structured llguidance==1.9.1 jsonschema==4.26.0 \
    jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
# The gateway and the client (lorax-bench), and the engine's HTTP server: the e2e driver.
download .whl-bench annotated-types==0.8.0 faker==40.63.0 googleapis-common-protos==1.76.0 \
    httptools==0.9.0 litestar==2.25.0 litestar-htmx==0.5.0 msgspec==0.23.0 multidict==7.2.1 \
    multipart==2.0.1 opentelemetry-api==1.45.2 opentelemetry-exporter-http-transport==0.66b2 \
    opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-otlp-proto-common==1.45.2 \
    opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-proto==1.45.2 \
    opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 polyfactory==3.5.0 \
    prometheus-client==0.26.0 protobuf==7.36.2 pydantic==2.14.4 pydantic-core==2.50.5 \
    rich-click==1.9.9 sniffio==1.3.1 typing-extensions==4.16.0 typing-inspection==0.4.5 \
    uvicorn==0.54.0
du -sh .whl/structured .whl-bench
