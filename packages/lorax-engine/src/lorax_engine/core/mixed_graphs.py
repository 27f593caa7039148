"""CUDA graphs for mixed steps (prompt chunks, alone or beside decodes), one per token bucket.

Served under load, about one step in three carries a new prompt next to the running decodes.
Run eagerly such a step is bound by the host launching its ~30 kernels a layer (and a LoRA
launch per projection with adapters): on the H200 with Llama-3-8B, 128 decodes plus a 256-token
prompt took 15-19 ms of launch time on the base model and 26-37 ms with 128 adapters, against
20.7 and 29.7 ms of GPU time (run 10, bench_mixed_steps.py). Replayed as one graph, the step's
launch took 1.6-3.6 ms of host time, most of it its input uploads.

What makes the step capturable: the prefill attention's grid depends only on the token and
sequence counts, and the LoRA metadata lives in fixed buffers (``LoraBatchMeta``). A step of
``t`` tokens over ``n`` sequences replays the graph of a token bucket ``>= t`` (below), which
always has ``max_num_seqs`` sequence places: places past ``n`` are empty (no query rows, KV
length 0) and token rows past ``t`` are padding (KV slot -1, no adapter), computed and ignored.
Logits are computed for at most ``max_num_seqs`` rows, gathered through a static index.

A step does not always take the smallest bucket that holds it: cuBLAS picks its GEMM kernels by
row count, and some counts get a slow one (H200, Llama-3-8B's gate/up projection: 272 µs at 448
rows, 165 µs at 464 to 512; run 10). ``capture_all`` times each graph's replay, and a step takes
the cheapest bucket at or above its token count.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from lorax_engine.core.cuda_graphs import StepOutputs
from lorax_engine.models.forward_batch import ForwardBatch
from lorax_kernels import LoraBatchMeta, greedy_logprob

if TYPE_CHECKING:
    from lorax_engine.core.graph_pool import GraphPool
    from lorax_engine.core.inflight import PendingTokens
    from lorax_engine.core.model_runner import HostBatch, ModelRunner

log = logging.getLogger(__name__)

# Steps of more tokens run eagerly: their GPU time (a 1024-token step of Llama-3-8B is ~40 ms on
# the H200) outlasts the host's launches, which then hide behind it.
MAX_GRAPH_TOKENS = 1024
# Bucket spacing: at most 31 padding rows, cheap beside the ~128 decode rows a loaded step has.
TOKEN_STEP = 32
# Replays timed per graph by `capture_all`.
TIMED_REPLAYS = 3


def token_buckets(max_num_tokens: int) -> list[int]:
    """Every ``TOKEN_STEP`` tokens up to ``min(MAX_GRAPH_TOKENS, max_num_tokens)``, which is the
    last bucket (the only one when it is smaller than the step)."""
    top = min(MAX_GRAPH_TOKENS, max_num_tokens)
    return [*range(TOKEN_STEP, top, TOKEN_STEP), top]


def cheapest_from(costs: Sequence[float]) -> list[int]:
    """For each bucket ``i``, the bucket ``j >= i`` of least cost (the smallest on a tie)."""
    choice: list[int] = []
    best = len(costs) - 1
    for i in reversed(range(len(costs))):
        if costs[i] <= costs[best]:
            best = i
        choice.append(best)
    return choice[::-1]


class MixedGraphs:
    """Captures whole mixed steps (embedding to logits and their greedy choice)."""

    def __init__(self, runner: ModelRunner, max_num_seqs: int, pool: GraphPool) -> None:
        self.runner = runner
        self.pool = pool
        self.buckets = token_buckets(runner.max_num_tokens)
        self.max_seqs = max_num_seqs
        tokens, seqs, dev = self.buckets[-1], max_num_seqs, runner.device
        self.input_ids = torch.zeros(tokens, dtype=torch.long, device=dev)
        self.positions = torch.zeros(tokens, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((tokens,), -1, dtype=torch.long, device=dev)
        width = runner.max_blocks_per_seq
        self.block_tables = torch.zeros(seqs, width, dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros(seqs, dtype=torch.int32, device=dev)
        self.query_start_loc = torch.zeros(seqs + 1, dtype=torch.int32, device=dev)
        # The token rows whose logits the step needs, padded with row 0.
        self.logit_rows = torch.zeros(seqs, dtype=torch.long, device=dev)
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, StepOutputs]] = {}
        # Per LoRA on/off, the bucket index each smallest-fitting bucket index runs as; without
        # timings (graphs captured on first use), the smallest fitting bucket.
        self._choice: dict[bool, list[int]] = {}

    def can_run(self, num_tokens: int, num_seqs: int, num_rows: int) -> bool:
        """Whether a step of ``num_tokens`` tokens over ``num_seqs`` sequences that needs the
        logits of ``num_rows`` rows fits the graphs."""
        return num_tokens <= self.buckets[-1] and max(num_seqs, num_rows) <= self.max_seqs

    def _batch(self, size: int, lora_meta: LoraBatchMeta | None) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables,
            seq_lens=self.seq_lens,
            query_start_loc=self.query_start_loc,
            is_decode=False,
            lora_meta=lora_meta,
        )

    def _capture(
        self, size: int, lora_meta: LoraBatchMeta | None
    ) -> tuple[torch.cuda.CUDAGraph, StepOutputs]:
        model = self.runner.model
        batch = self._batch(size, lora_meta)

        def step() -> StepOutputs:
            hidden = model(batch, self.runner.kv_caches)  # [size, hidden]
            logits = model.compute_logits(hidden.index_select(0, self.logit_rows))  # [seqs, vocab]
            return (logits, *greedy_logprob(logits))

        captured = self.pool.capture(step)
        log.debug("captured mixed-step graph for %d tokens (lora=%s)", size, lora_meta is not None)
        return captured

    def capture_all(self) -> None:
        """Capture every bucket now, with and (when the runner has slot tables) without LoRA.

        The captures run on the empty sequence places and padding rows the buffers start with,
        so they write no KV. The LoRA ones map every token to slot 0 for their warm-up runs: the
        graph records launches that read the metadata buffers, whatever a step writes there.
        """
        meta = self.runner.lora_meta
        variants = [False] if meta is None else [False, True]
        for size in reversed(self.buckets):
            for lora in variants:
                self._graphs[(size, lora)] = self._capture(size, self._meta_for(size, lora))
        for lora in variants:
            # Summed over the shards of a sharded model, so that every shard picks the same
            # bucket: a graph's all-reduces must have the same size on all of them.
            timed = torch.tensor([self._replay_ms(size, lora) for size in self.buckets])
            costs = self.runner.model.tp.all_reduce_(timed.to(self.runner.device)).tolist()
            self._choice[lora] = cheapest_from(costs)
            log.info(
                "mixed-step graphs (lora=%s), replay ms per bucket: %s",
                lora,
                ", ".join(
                    f"{size}: {ms:.2f}" for size, ms in zip(self.buckets, costs, strict=True)
                ),
            )

    def _meta_for(self, size: int, lora: bool) -> LoraBatchMeta | None:
        """The runner's LoRA metadata with every one of ``size`` tokens on slot 0 (captures and
        timings only), or None."""
        meta = self.runner.lora_meta
        if not lora or meta is None:
            return None
        meta.update_(torch.zeros(size, dtype=torch.int32, device=self.runner.device))
        return meta

    def _replay_ms(self, size: int, lora: bool) -> float:
        """Milliseconds of one replay of a captured graph, on the empty places and padding rows
        the buffers hold at start-up: the work that grows with the token count."""
        self._meta_for(size, lora)
        graph = self._graphs[(size, lora)][0]
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(TIMED_REPLAYS):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / TIMED_REPLAYS

    def run(
        self,
        host: HostBatch,
        rows: Sequence[int],
        lora_meta: LoraBatchMeta | None,
        pending: PendingTokens | None,
    ) -> StepOutputs:
        """Replay the bucket's graph: ``(logits, greedy ids, greedy logprobs)`` of ``rows``.
        ``pending``: the in-flight step whose sampled ids some tokens take as input."""
        tokens, seqs = len(host.input_ids), len(host.seq_lens)
        fits = bisect.bisect_left(self.buckets, tokens)
        choice = self._choice.get(lora_meta is not None)
        size = self.buckets[fits if choice is None else choice[fits]]
        width = host.block_tables.shape[1]
        self.input_ids[:tokens].copy_(torch.from_numpy(host.input_ids), non_blocking=True)
        self.runner.patch_pending(self.input_ids[:tokens], host, pending)
        self.positions[:tokens].copy_(torch.from_numpy(host.positions), non_blocking=True)
        self.slot_mapping[:tokens].copy_(torch.from_numpy(host.slot_mapping), non_blocking=True)
        self.slot_mapping[tokens:size].fill_(-1)
        # Sequence places past `seqs`: no query rows (their runs start and end at `tokens`).
        starts = np.full(self.max_seqs + 1, tokens, dtype=np.int32)
        starts[: seqs + 1] = host.query_start_loc
        lens = np.zeros(self.max_seqs, dtype=np.int32)
        lens[:seqs] = host.seq_lens
        logit_rows = np.zeros(self.max_seqs, dtype=np.int64)
        logit_rows[: len(rows)] = rows
        self.query_start_loc.copy_(torch.from_numpy(starts), non_blocking=True)
        self.seq_lens.copy_(torch.from_numpy(lens), non_blocking=True)
        self.logit_rows.copy_(torch.from_numpy(logit_rows), non_blocking=True)
        self.block_tables[:seqs, :width].copy_(
            torch.from_numpy(host.block_tables), non_blocking=True
        )
        key = (size, lora_meta is not None)
        if key not in self._graphs:
            self._graphs[key] = self._capture(size, lora_meta)
        graph, (logits, ids, logprobs) = self._graphs[key]
        graph.replay()
        n = len(rows)
        return logits[:n], ids[:n], logprobs[:n]
