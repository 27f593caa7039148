"""On 2+ GPUs: the demo model sharded over 2 GPUs (NCCL, CUDA graphs, adapters promoted on the
side stream) gives one GPU's greedy tokens for the base model and a batch of mixed adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "tp_generate.py"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
    ),
]


def _tokens(cache: Path, num_shard: int) -> list[list[int]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(cache), str(num_shard), "--cuda"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(os.environ, NCCL_NVLS_ENABLE="0"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["tokens"]


def test_two_gpus_give_one_gpus_greedy_tokens(tmp_path: Path) -> None:
    one = _tokens(tmp_path, 1)
    two = _tokens(tmp_path, 2)
    assert len({tuple(t) for t in one[:3]}) == 3  # base, pirate, shakespeare differ
    assert two == one
