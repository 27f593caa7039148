"""Builds each step's flat token batch, runs the model, and returns the logits the sampler needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import lorax_kernels
from lorax_engine.core.cuda_graphs import DecodeGraphs
from lorax_engine.core.graph_pool import GraphPool
from lorax_engine.core.inflight import PendingTokens
from lorax_engine.core.mixed_graphs import MixedGraphs
from lorax_engine.core.request import Request
from lorax_engine.core.scheduler import ScheduledChunk
from lorax_engine.lora import LoraSlots
from lorax_engine.models.decoder import DecoderModel
from lorax_engine.models.forward_batch import ForwardBatch
from lorax_kernels import LoraBatchMeta


@dataclass(slots=True, frozen=True)
class RunnerOutput:
    """Logits of the chunks that sample (in chunk order) and the prompt logprobs gathered."""

    sample_logits: torch.Tensor  # [num_sampling_chunks, vocab], the model's dtype
    # Greedy choice and its logprob per sampling row, when the CUDA graph already computed them.
    greedy: tuple[torch.Tensor, torch.Tensor] | None = None
    # Per chunk index, logprobs of the prompt tokens it scored (token j + 1 given tokens <= j).
    prompt_logprobs: dict[int, list[float]] = field(default_factory=dict[int, list[float]])


@dataclass(slots=True)
class HostBatch:
    """The step's inputs as numpy arrays, before they go to the device."""

    input_ids: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    block_tables: np.ndarray
    seq_lens: np.ndarray
    query_start_loc: np.ndarray
    token_slots: np.ndarray
    is_decode: bool
    # Tokens sampled by the step still in flight: their flat positions in ``input_ids`` (which
    # holds -1 there) and their rows in that step's device ids (see `patch_pending`).
    pending_index: np.ndarray
    pending_rows: np.ndarray


class ModelRunner:
    """Owns the model, its KV cache and (on CUDA) the decode and mixed-step graphs."""

    def __init__(
        self,
        model: DecoderModel,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        max_num_seqs: int,
        max_num_tokens: int,
        max_blocks_per_seq: int,
        lora_slots: LoraSlots | None = None,
        use_cuda_graphs: bool = False,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = kv_caches[0][0].device
        self.max_num_tokens = max_num_tokens
        self.max_blocks_per_seq = max_blocks_per_seq
        self.lora_slots = lora_slots
        self.lora_meta: LoraBatchMeta | None = None
        if lora_slots is not None:
            model.attach_lora(lora_slots)
            self.lora_meta = lorax_kernels.LoraBatchMeta.allocate(
                max_num_tokens, lora_slots.num_slots, self.device
            )
        self.graphs: DecodeGraphs | None = None
        self.mixed_graphs: MixedGraphs | None = None
        if use_cuda_graphs:
            pool = GraphPool()
            self.graphs = DecodeGraphs(self, max_num_seqs, pool)
            self.mixed_graphs = MixedGraphs(self, max_num_seqs, pool)
        # Tensor parallelism (lorax_engine.distributed): gets each step's `forward` arguments
        # before rank 0 runs it, and sends them to the other shards, which run the same step.
        self.on_step: Callable[[HostBatch, list[int], bool, PendingTokens | None], None] | None = (
            None
        )

    def capture_graphs(self) -> None:
        """Capture every decode graph (without LoRA: those are captured on first use) and every
        mixed-step graph now; nothing without CUDA graphs."""
        if self.graphs is not None:
            self.graphs.capture_all()
        if self.mixed_graphs is not None:
            self.mixed_graphs.capture_all()

    def build_host_batch(
        self, chunks: Sequence[ScheduledChunk], pending: PendingTokens | None = None
    ) -> HostBatch:
        """``pending``: the step in flight, whose sampled tokens some chunks end with."""
        if all(c.num_tokens == 1 for c in chunks):
            return self._build_decode_batch(chunks, pending)
        bs = self.block_size
        ids: list[np.ndarray] = []
        pos: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        lora: list[np.ndarray] = []
        seq_lens = np.empty(len(chunks), dtype=np.int32)
        qsl = np.zeros(len(chunks) + 1, dtype=np.int32)
        width = max(len(c.request.block_ids) for c in chunks)
        tables = np.zeros((len(chunks), width), dtype=np.int32)
        pending_index: list[int] = []
        pending_rows: list[int] = []
        for i, c in enumerate(chunks):
            req = c.request
            end = c.start + c.num_tokens
            p = np.arange(c.start, end, dtype=np.int64)
            blocks = np.asarray(req.block_ids, dtype=np.int64)
            known = req.token_ids[c.start : end]
            if len(known) < c.num_tokens:  # the chunk ends with the request's pending token
                pending_index.append(int(qsl[i]) + len(known))
                pending_rows.append(_row_in(pending, req))
            ids.append(np.asarray(known + [-1] * (c.num_tokens - len(known)), dtype=np.int64))
            pos.append(p)
            slots.append(blocks[p // bs] * bs + p % bs)
            lora.append(np.full(c.num_tokens, req.adapter_slot, dtype=np.int32))
            seq_lens[i] = end
            qsl[i + 1] = qsl[i] + c.num_tokens
            tables[i, : len(blocks)] = blocks
        return HostBatch(
            input_ids=np.concatenate(ids),
            positions=np.concatenate(pos),
            slot_mapping=np.concatenate(slots),
            block_tables=tables,
            seq_lens=seq_lens,
            query_start_loc=qsl,
            token_slots=np.concatenate(lora),
            is_decode=False,  # all-decode batches take _build_decode_batch
            pending_index=np.array(pending_index, dtype=np.int64),
            pending_rows=np.array(pending_rows, dtype=np.int64),
        )

    def _build_decode_batch(
        self, chunks: Sequence[ScheduledChunk], pending: PendingTokens | None
    ) -> HostBatch:
        """The common all-decode step, with scalar Python instead of per-request numpy calls."""
        bs = self.block_size
        n = len(chunks)
        reqs = [c.request for c in chunks]
        pos = [c.start for c in chunks]
        tables = np.zeros((n, max(len(r.block_ids) for r in reqs)), dtype=np.int32)
        for i, r in enumerate(reqs):
            tables[i, : len(r.block_ids)] = r.block_ids
        # A decode's input is pending when the step that sampled it is still in flight.
        waiting = [i for i, r in enumerate(reqs) if pos[i] >= len(r.token_ids)]
        ids = [
            r.token_ids[p] if p < len(r.token_ids) else -1 for r, p in zip(reqs, pos, strict=True)
        ]
        return HostBatch(
            input_ids=np.array(ids, dtype=np.int64),
            positions=np.array(pos, dtype=np.int64),
            slot_mapping=np.array(
                [r.block_ids[p // bs] * bs + p % bs for r, p in zip(reqs, pos, strict=True)],
                dtype=np.int64,
            ),
            block_tables=tables,
            seq_lens=np.array(pos, dtype=np.int32) + 1,
            query_start_loc=np.arange(n + 1, dtype=np.int32),
            token_slots=np.array([r.adapter_slot for r in reqs], dtype=np.int32),
            is_decode=True,
            pending_index=np.array(waiting, dtype=np.int64),
            pending_rows=np.array([_row_in(pending, reqs[i]) for i in waiting], dtype=np.int64),
        )

    def _lora_meta_for(self, token_slots: np.ndarray) -> LoraBatchMeta | None:
        """Update the LoRA metadata for this step, or None when no token uses an adapter."""
        if self.lora_meta is None or not bool((token_slots >= 0).any()):
            return None
        self.lora_meta.update_(torch.from_numpy(token_slots).to(self.device, non_blocking=True))
        return self.lora_meta

    def patch_pending(
        self, input_ids: torch.Tensor, host: HostBatch, pending: PendingTokens | None
    ) -> None:
        """Write the in-flight step's sampled ids into ``input_ids`` on the device (no sync)."""
        if not len(host.pending_index):
            return
        assert pending is not None
        where = torch.from_numpy(np.stack([host.pending_index, host.pending_rows]))
        where = where.to(self.device, non_blocking=True)  # [2, num_pending]
        input_ids.index_copy_(0, where[0], pending.ids.index_select(0, where[1]))

    @torch.inference_mode()
    def execute(
        self, chunks: Sequence[ScheduledChunk], pending: PendingTokens | None = None
    ) -> RunnerOutput:
        """Run one step. ``pending``: the step in flight, whose sampled tokens some chunks end
        with. The work is launched, not waited for, unless prompt logprobs are asked for."""
        host = self.build_host_batch(chunks, pending)
        sampling = [i for i, c in enumerate(chunks) if c.samples]
        if (
            self.graphs is not None
            and host.is_decode
            and len(sampling) == len(chunks)
            and self.graphs.can_run(len(chunks))
        ):
            logits, greedy = self._forward_hooked(host, [], True, pending)
            return RunnerOutput(logits, greedy)

        # Rows of `hidden` whose logits we need: prompt-scoring rows first, then sampling rows.
        qsl = host.query_start_loc
        score_rows: list[int] = []
        score_next: list[int] = []
        score_owner: list[int] = []
        for i, c in enumerate(chunks):
            req = c.request
            if not req.wants_prompt_logprobs:
                continue
            # Token j's logits score prompt token j + 1. After a preemption the prefill is
            # recomputed from 0, but tokens already scored are not scored twice.
            assert req.prompt_logprobs is not None
            first = max(c.start, len(req.prompt_logprobs) - 1)
            last = min(c.start + c.num_tokens, req.num_prompt_tokens - 1)
            for j in range(first, last):
                score_rows.append(int(qsl[i]) + j - c.start)
                score_next.append(req.token_ids[j + 1])
                score_owner.append(i)
        sample_rows = [int(qsl[i + 1]) - 1 for i in sampling]
        # [rows, vocab]
        logits, greedy = self._forward_hooked(host, score_rows + sample_rows, False, pending)
        prompt_logprobs: dict[int, list[float]] = {}
        if score_rows:
            greedy = None  # the sampler computes it for the sampling rows alone
            n = len(score_rows)
            lp = torch.log_softmax(logits[:n].float(), dim=-1)
            nxt = torch.tensor(score_next, dtype=torch.long, device=self.device).unsqueeze(1)
            values = lp.gather(1, nxt).squeeze(1).tolist()
            for owner, v in zip(score_owner, values, strict=True):
                prompt_logprobs.setdefault(owner, []).append(v)
            logits = logits[n:]
        return RunnerOutput(logits, greedy, prompt_logprobs)

    def _forward_hooked(
        self, host: HostBatch, rows: list[int], use_graph: bool, pending: PendingTokens | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        if self.on_step is not None:
            self.on_step(host, rows, use_graph, pending)
        return self.forward(host, rows, use_graph, pending)

    @torch.inference_mode()
    def forward(
        self,
        host: HostBatch,
        rows: list[int],
        use_graph: bool,
        pending: PendingTokens | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Run one step on this model (shard): ``[len(rows), vocab]`` logits of ``rows``.

        ``use_graph``: replay the decode graph instead, for every row. A step that fits the
        mixed-step graphs replays one of those. Both also give the greedy ``(ids, logprobs)`` of
        the rows. Every shard of a sharded model calls this with the same arguments.
        """
        lora_meta = self._lora_meta_for(host.token_slots)
        if use_graph:
            assert self.graphs is not None
            logits, ids, logprobs = self.graphs.run(host, lora_meta, pending)
            return logits, (ids, logprobs)
        mixed = self.mixed_graphs
        if mixed is not None and mixed.can_run(len(host.input_ids), len(host.seq_lens), len(rows)):
            logits, ids, logprobs = mixed.run(host, rows, lora_meta, pending)
            return logits, (ids, logprobs)
        dev = self.device
        batch = ForwardBatch(
            input_ids=torch.from_numpy(host.input_ids).to(dev, non_blocking=True),
            positions=torch.from_numpy(host.positions).to(dev, non_blocking=True),
            slot_mapping=torch.from_numpy(host.slot_mapping).to(dev, non_blocking=True),
            block_tables=torch.from_numpy(host.block_tables).to(dev, non_blocking=True),
            seq_lens=torch.from_numpy(host.seq_lens).to(dev, non_blocking=True),
            query_start_loc=torch.from_numpy(host.query_start_loc).to(dev, non_blocking=True),
            is_decode=host.is_decode,
            lora_meta=lora_meta,
        )
        self.patch_pending(batch.input_ids, host, pending)
        hidden = self.model(batch, self.kv_caches)  # [num_tokens, hidden]
        index = torch.from_numpy(np.array(rows, dtype=np.int64)).to(dev, non_blocking=True)
        return self.model.compute_logits(hidden.index_select(0, index)), None


def _row_in(pending: PendingTokens | None, request: Request) -> int:
    """The in-flight row of ``request``'s pending token (there must be a step in flight)."""
    if pending is None:
        raise RuntimeError(
            f"request {request.request_id} has a pending token but no step is in flight"
        )
    return pending.row(request)
