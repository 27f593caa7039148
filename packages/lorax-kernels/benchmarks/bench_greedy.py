"""The greedy choice (argmax and its log-probability) over Llama-3's 128,256-logit vocabulary:
``greedy_logprob`` (one pass) against the eager argmax + gather + logsumexp the decode graph ran
before it, per call in a CUDA graph over rotating fp32 logits.

    PYTHONPATH=packages/lorax-kernels/src python3 packages/lorax-kernels/benchmarks/bench_greedy.py
"""

from __future__ import annotations

import torch
from common import copy_bandwidth_gbs, markdown_table, time_graph_us

from lorax_kernels import greedy_logprob

VOCAB = 128256
SETS = 8  # rotating logits, so consecutive calls do not find them in L2


def _eager(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = logits.argmax(dim=-1)
    return ids, logits.gather(1, ids.unsqueeze(1)).squeeze(1) - logits.logsumexp(dim=-1)


def run(copy_gbs: float) -> str:
    """µs per call at decode batch sizes, and the one-pass kernel's share of copy bandwidth."""
    rows = []
    for batch in (1, 16, 64, 256):
        sets = [torch.randn(batch, VOCAB, device="cuda") * 3 for _ in range(SETS)]
        fused_us = time_graph_us([lambda x=x: greedy_logprob(x) for x in sets])
        eager_us = time_graph_us([lambda x=x: _eager(x) for x in sets])
        pct = 100 * batch * VOCAB * 4 / fused_us / 1e3 / copy_gbs
        rows.append([batch, fused_us, eager_us, eager_us / fused_us, pct])
    out = "### Greedy choice over 128,256 fp32 logits (in a CUDA graph)\n\n"
    header = ["rows", "greedy_logprob µs", "eager µs", "eager / one pass", "one pass % of copy BW"]
    return out + markdown_table(header, rows)


if __name__ == "__main__":
    print(run(copy_bandwidth_gbs()))
