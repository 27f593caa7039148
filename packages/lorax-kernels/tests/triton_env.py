"""Where the Triton kernel tests run: on CUDA at real shapes, or on the CPU under
``TRITON_INTERPRET=1`` (set before Triton is imported: test_interpreter.py starts such runs in a
subprocess); anywhere else they are skipped."""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else "cpu"
# A test module's ``pytestmark``.
NEEDS_TRITON = pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="Triton needs CUDA or TRITON_INTERPRET=1"
)
