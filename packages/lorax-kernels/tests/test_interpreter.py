"""Runs the Triton-vs-reference tests on CPU under TRITON_INTERPRET=1, in a subprocess.

The variable must be set before Triton is imported, and other tests in this process may already
have imported it, so the interpreter runs get their own Python process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="with CUDA the Triton tests run natively; under the interpreter they run directly",
)
@pytest.mark.parametrize(
    "module",
    [
        "test_triton_sgmv.py",
        "test_triton_sgmv_decode.py",
        "test_triton_meta.py",
        "test_triton_attention.py",
        "test_triton_fused.py",
        "test_fp8_triton.py",
        "test_triton_greedy.py",
    ],
)
def test_triton_kernels_under_interpreter(module: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / module)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout, report
