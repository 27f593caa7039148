"""Runs a few synthetic prefill steps at start-up, so the first requests do not wait for kernels
to compile.

On CUDA a Triton kernel compiles on its first launch, once per specialisation (Triton specialises
integer arguments that equal 1 or are divisible by 16, and pointers by alignment): seconds for
the prefill path's attention, KV write, norm, rotary and LoRA kernels. Capturing the graphs
compiles the kernels of the steps they replay; the steps here compile the eager path's. They
cover one and several sequences, token counts divisible by 16 and not, tokens with and without
an adapter slot, a step past the fused LoRA kernel's row limit (the tiled path), and one token
on an adapter: the LoRA metadata update runs outside the graphs, and its one-token variant would
otherwise compile at the first decode step with one adapter request. With the mixed-step graphs
(``core.mixed_graphs``) each prompt step's first sequence is longer by ``MAX_GRAPH_TOKENS``, so
that the step runs eagerly as steps too large for the graphs do (its token count keeps its class
modulo 16). Their KV lands in blocks nobody owns yet, and a request writes its own KV before it
reads it, so nothing they leave behind is ever read. On CPU the steps cost milliseconds.
"""

from __future__ import annotations

import logging
import time

import torch

from lorax_engine.core.mixed_graphs import MAX_GRAPH_TOKENS
from lorax_engine.core.model_runner import ModelRunner
from lorax_engine.core.request import Request
from lorax_engine.core.scheduler import ScheduledChunk
from lorax_engine.params import SamplingParams
from lorax_kernels import greedy_logprob
from lorax_kernels.sgmv import DECODE_MAX_ROWS

log = logging.getLogger("lorax_engine.warm_up")

# Each step's sequences as (prompt length, with an adapter): one odd-length sequence; two whose
# total is divisible by 16; three past the fused LoRA kernel's rows; one token on an adapter.
# Longer than a sequence may be: split, the pieces alike.
WARM_UP_STEPS: tuple[tuple[tuple[int, bool], ...], ...] = (
    ((17, False),),
    ((16, False), (32, True)),
    ((5, False), (16, True), (DECODE_MAX_ROWS + 44, False)),
    ((1, True),),
)


def warm_up(runner: ModelRunner, vocab_size: int) -> int:
    """Run the warm-up steps that fit the runner's limits (tokens per step, blocks per sequence,
    blocks in the pool) and their greedy choice; returns how many ran. Call it before any
    request or adapter is admitted, after the graphs are captured (with tensor
    parallelism, the workers mirror these steps only once their captures are done)."""
    bs = runner.block_size
    max_len = runner.max_blocks_per_seq * bs
    pool = runner.kv_caches[0][0].shape[0]
    start = time.perf_counter()
    ran = 0
    longer = MAX_GRAPH_TOKENS if runner.mixed_graphs is not None else 0
    for step in WARM_UP_STEPS:
        (first, first_lora), *rest = step
        if first > 1:
            step = ((first + longer, first_lora), *rest)
        seqs = [(n, lora) for length, lora in step for n in _pieces(length, max_len)]
        if (
            sum(n for n, _ in seqs) > runner.max_num_tokens
            or sum(-(-n // bs) for n, _ in seqs) > pool
        ):
            continue
        chunks = []
        next_block = 0
        for i, (n, lora) in enumerate(seqs):
            blocks = list(range(next_block, next_block + -(-n // bs)))
            next_block += len(blocks)
            req = Request(
                f"warm-up-{ran}-{i}",
                [t % vocab_size for t in range(1, n + 1)],
                SamplingParams(max_new_tokens=1),
                arrival_time=0.0,
                # Slot 0 holds no adapter yet (rank 0): the LoRA kernels run and add nothing.
                adapter_slot=0 if runner.lora_slots is not None and lora else -1,
                block_ids=blocks,
            )
            chunks.append(ScheduledChunk.of(req, n))
        out = runner.execute(chunks)
        greedy_logprob(out.sample_logits)
        ran += 1
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    log.info("warm-up: %d prefill steps in %.1f s", ran, time.perf_counter() - start)
    return ran


def _pieces(length: int, max_len: int) -> list[int]:
    """``length`` tokens as sequences of at most ``max_len``."""
    return [min(max_len, length - i) for i in range(0, length, max_len)]
