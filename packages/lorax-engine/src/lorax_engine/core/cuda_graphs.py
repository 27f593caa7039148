"""CUDA graphs for decode steps, one per batch-size bucket (and per LoRA on/off)."""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING

import torch

from lorax_engine.models.forward_batch import ForwardBatch
from lorax_kernels import LoraBatchMeta, greedy_logprob

if TYPE_CHECKING:
    from lorax_engine.core.graph_pool import GraphPool
    from lorax_engine.core.inflight import PendingTokens
    from lorax_engine.core.model_runner import HostBatch, ModelRunner

log = logging.getLogger(__name__)

# (logits, greedy ids, greedy logprobs) of every row the graph computes logits for.
StepOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to ``max_num_seqs`` (padding waste stays under ~2x at small
    sizes and under 16 rows at large ones)."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_num_seqs]
    buckets += list(range(16, max_num_seqs, 16))
    buckets.append(max_num_seqs)
    return sorted(set(buckets))


class DecodeGraphs:
    """Captures the whole decode step (embedding to logits) so one replay launches everything.

    Inputs live in static buffers sized for the largest bucket; a smaller batch is padded (seq_len
    0 and slot -1: the kernels skip those rows). Graphs are captured on first use of a bucket.
    """

    def __init__(self, runner: ModelRunner, max_num_seqs: int, pool: GraphPool) -> None:
        self.runner = runner
        self.pool = pool
        self.buckets = batch_buckets(max_num_seqs)
        n = self.buckets[-1]
        dev = runner.device
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.block_tables = torch.zeros(n, runner.max_blocks_per_seq, dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, StepOutputs]] = {}

    def can_run(self, num_seqs: int) -> bool:
        return num_seqs <= self.buckets[-1]

    def _batch(self, size: int, lora_meta: LoraBatchMeta | None) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            is_decode=True,
            lora_meta=lora_meta,
        )

    def _capture(
        self, size: int, lora_meta: LoraBatchMeta | None
    ) -> tuple[torch.cuda.CUDAGraph, StepOutputs]:
        model = self.runner.model
        batch = self._batch(size, lora_meta)

        def step() -> StepOutputs:
            logits = model.compute_logits(model(batch, self.runner.kv_caches))  # [size, vocab]
            # The greedy choice, so the common all-greedy batch needs no kernel outside the graph.
            return (logits, *greedy_logprob(logits))

        captured = self.pool.capture(step)
        log.debug("captured decode graph for batch %d (lora=%s)", size, lora_meta is not None)
        return captured

    def capture_all(self) -> None:
        """Capture every bucket now (largest first, so smaller ones reuse its memory pool)."""
        for size in reversed(self.buckets):
            self._graphs[(size, False)] = self._capture(size, None)

    def run(
        self, host: HostBatch, lora_meta: LoraBatchMeta | None, pending: PendingTokens | None
    ) -> StepOutputs:
        """Replay the bucket's graph; returns ``(logits, greedy ids, greedy logprobs)`` for n rows.
        ``pending``: the in-flight step whose sampled ids some rows take as input."""
        n = len(host.seq_lens)
        size = self.buckets[bisect.bisect_left(self.buckets, n)]
        width = host.block_tables.shape[1]
        self.input_ids[:n].copy_(torch.from_numpy(host.input_ids), non_blocking=True)
        self.runner.patch_pending(self.input_ids[:n], host, pending)
        self.positions[:n].copy_(torch.from_numpy(host.positions), non_blocking=True)
        self.slot_mapping[:n].copy_(torch.from_numpy(host.slot_mapping), non_blocking=True)
        self.slot_mapping[n:size].fill_(-1)
        self.seq_lens[:n].copy_(torch.from_numpy(host.seq_lens), non_blocking=True)
        self.seq_lens[n:size].fill_(0)
        self.block_tables[:n, :width].copy_(torch.from_numpy(host.block_tables), non_blocking=True)
        key = (size, lora_meta is not None)
        if key not in self._graphs:
            self._graphs[key] = self._capture(size, lora_meta)
        graph, (logits, ids, logprobs) = self._graphs[key]
        graph.replay()
        return logits[:n], ids[:n], logprobs[:n]
