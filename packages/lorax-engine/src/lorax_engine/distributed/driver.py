"""Rank 0's side of a sharded engine: spawn the workers, join them, and drive every step.

The control channel is a gloo group (also with NCCL for the forward's collectives): rank 0
broadcasts one message at a time and the workers apply them in order. Adapter weights travel on a
gloo group of their own, received by a worker thread while steps go on, so that a promotion (tens
of megabytes for an 8B-shaped adapter) does not hold the step messages back.

- ``("runner", num_lora_slots)``: build the runner (KV cache, slot tables, decode graphs).
- ``("step", host_batch, rows, use_graph, num_pending)``: run ``ModelRunner.forward`` with these
  arguments; ``num_pending > 0``: the in-flight step's sampled ids follow (a broadcast of that
  many int64 on the forward's group), which the batch's pending decode rows read.
- ``("lora", slot)``: write this shard's slice of the next adapter received (a ``ShardWeights``,
  sent on the adapter group just before) into ``slot``.
- ``("stop",)``: leave the loop and exit.

A worker that dies takes the engine with it: rank 0 would wait forever in the next collective, so
a watchdog ends the process (as LoRAX's launcher stops every shard when one fails).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import sys
import threading
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lorax_engine.config import EngineConfig
from lorax_engine.core.inflight import PendingTokens
from lorax_engine.core.model_runner import HostBatch, ModelRunner
from lorax_engine.distributed.lora import ShardedSlotWriter, ShardWeights
from lorax_engine.distributed.parallel import TensorParallel, check_shardable
from lorax_engine.lora import LoraSlots

log = logging.getLogger(__name__)

# The control group waits while the engine is idle, which is not an error: no practical timeout.
CONTROL_TIMEOUT = timedelta(days=365)


@dataclass(slots=True, frozen=True)
class ShardLaunch:
    """What a worker is started with."""

    config: EngineConfig
    model_dir: Path
    store_port: int
    parent_pid: int


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def shard_device(config: EngineConfig, rank: int) -> EngineConfig:
    """``config`` for shard ``rank``: on CUDA, GPU ``rank`` of the host."""
    if config.torch_device.type != "cuda":
        return config
    return replace(config, device=f"cuda:{rank}")


@dataclass(slots=True, frozen=True)
class ShardGroups:
    """What a shard process communicates over."""

    tp: TensorParallel  # the forward's collectives (NCCL on CUDA, gloo on CPU)
    control: Any  # gloo: the step messages, in order
    adapters: Any  # gloo: adapter weights, off the step path


def join_group(rank: int, world_size: int, store: Any, device: torch.device) -> ShardGroups:
    """Join the process group and create the control and adapter groups (every rank calls it)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        # Each shard process would otherwise start a thread per core: N times oversubscribed,
        # their spinning threads slow every collective by orders of magnitude.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world_size)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    adapters = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return ShardGroups(TensorParallel(rank, world_size, dist.group.WORLD), control, adapters)


def check_launchable(config: EngineConfig, model_dir: Path) -> None:
    """Raise ValueError with the reason when ``config.num_shard`` cannot serve this checkpoint:
    a dimension it does not divide, quantized weights, or fewer GPUs than shards."""
    import json

    from lorax_engine.models.model_config import ModelConfig
    from lorax_engine.quant.spec import resolve_quant_spec

    check_shardable(ModelConfig.from_dir(model_dir), config.num_shard)
    if resolve_quant_spec(config.quantize, json.loads((model_dir / "config.json").read_text())):
        raise ValueError("quantized weights (--quantize, GPTQ/AWQ checkpoints) cannot be sharded")
    if config.torch_device.type == "cuda" and torch.cuda.device_count() < config.num_shard:
        raise ValueError(
            f"--num-shard {config.num_shard} needs {config.num_shard} GPUs, "
            f"{torch.cuda.device_count()} visible"
        )


def agree_num_blocks(num_blocks: int, control: Any) -> int:
    """The KV pool every shard can hold: the smallest of the shards' own counts."""
    t = torch.tensor([num_blocks], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=control)
    return int(t.item())


class ShardGroup:
    """The worker processes and rank 0's end of the control channel."""

    def __init__(
        self,
        groups: ShardGroups,
        processes: list[Any],
        store: Any,
        stopping: threading.Event,
    ) -> None:
        self.tp = groups.tp
        self._control = groups.control
        self._adapters = groups.adapters
        self._processes = processes
        self._store = store  # rank 0 hosts the rendezvous store: keep it alive
        self._lock = threading.Lock()  # one control message at a time
        self._adapter_lock = threading.Lock()  # one adapter (weights, then its message) at a time
        self._stopping = stopping
        atexit.register(self.stop)

    @classmethod
    def launch(cls, config: EngineConfig, model_dir: Path) -> ShardGroup:
        """Spawn ranks 1..num_shard-1 and join them as rank 0 (on GPU 0 with CUDA)."""
        from lorax_engine.distributed.worker import worker_main

        world = config.num_shard
        store = dist.TCPStore(  # pyright: ignore[reportPrivateImportUsage]
            "127.0.0.1", 0, world, is_master=True, wait_for_workers=False
        )
        launch = ShardLaunch(config, model_dir, store.port, os.getpid())
        ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
        processes = [
            ctx.Process(
                target=worker_main, args=(rank, launch), name=f"lorax-shard-{rank}", daemon=True
            )
            for rank in range(1, world)
        ]
        for p in processes:
            p.start()
        # Watching from the start: a worker that fails to load ends the engine instead of
        # leaving rank 0 waiting at the rendezvous.
        stopping = threading.Event()
        threading.Thread(
            target=_watch, args=(processes, stopping), name="lorax-shard-watchdog", daemon=True
        ).start()
        groups = join_group(0, world, store, shard_device(config, 0).torch_device)
        log.info("tensor parallel: %d shards over %s", world, backend_for(config.torch_device))
        return cls(groups, processes, store, stopping)

    def send(self, message: tuple[Any, ...]) -> None:
        """Broadcast one control message to every worker (thread-safe; in call order)."""
        with self._lock:
            dist.broadcast_object_list([message], src=0, group=self._control)

    def agree_num_blocks(self, num_blocks: int) -> int:
        """The KV pool size every shard can hold (each calls this with its own count)."""
        return agree_num_blocks(num_blocks, self._control)

    def start_runners(self, runner: ModelRunner) -> None:
        """Have the workers build their runners like rank 0's, then mirror each of its steps."""
        slots = runner.lora_slots
        self.send(("runner", 0 if slots is None else slots.num_slots))
        runner.on_step = self._publish_step

    def _publish_step(
        self, host: HostBatch, rows: list[int], use_graph: bool, pending: PendingTokens | None
    ) -> None:
        # Decode inputs still on the device (sampled by the step in flight) follow the message
        # on the forward's group, without a round trip through the host.
        num_pending = 0 if pending is None or not len(host.pending_index) else len(pending.ids)
        with self._lock:
            dist.broadcast_object_list(
                [("step", host, rows, use_graph, num_pending)], src=0, group=self._control
            )
            if pending is not None and num_pending:
                dist.broadcast(pending.ids, src=0, group=self.tp.group)

    def slot_writer(self, slots: LoraSlots) -> ShardedSlotWriter:
        """What the adapter manager writes adapters through: every shard gets its slice."""
        return ShardedSlotWriter(slots, self.tp, self._send_adapter)

    def _send_adapter(self, slot: int, weights: ShardWeights) -> None:
        with self._adapter_lock:
            dist.broadcast_object_list([weights], src=0, group=self._adapters)
            self.send(("lora", slot))

    def stop(self) -> None:
        """Tell the workers to exit and wait for them (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        # A step or promotion stuck in a collective holds its lock: then the workers are ended.
        if self._adapter_lock.acquire(timeout=5):
            try:  # ends the workers' adapter threads
                dist.broadcast_object_list([None], src=0, group=self._adapters)
            finally:
                self._adapter_lock.release()
        if self._lock.acquire(timeout=5):
            try:
                dist.broadcast_object_list([("stop",)], src=0, group=self._control)
            finally:
                self._lock.release()
        for p in self._processes:
            p.join(timeout=10)
            if p.exitcode is None:
                p.terminate()
                p.join(timeout=5)
        if dist.is_initialized():
            dist.destroy_process_group()


def _watch(processes: list[Any], stopping: threading.Event) -> None:
    while not stopping.wait(0.2):
        for p in processes:
            if p.exitcode is not None and not stopping.is_set():
                log.critical(
                    "shard process %s exited with %s; the engine cannot continue",
                    p.name,
                    p.exitcode,
                )
                sys.stderr.flush()
                os._exit(1)
