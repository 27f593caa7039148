"""A worker shard (rank >= 1): load its part of the model, then run the steps rank 0 sends."""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

import torch
import torch.distributed as dist

from lorax_engine.distributed.driver import (
    ShardLaunch,
    agree_num_blocks,
    join_group,
    shard_device,
)
from lorax_engine.distributed.lora import ShardWeights, shard_lora_weights

log = logging.getLogger(__name__)


def worker_main(rank: int, launch: ShardLaunch) -> None:
    """Entry point of a spawned shard process; returns when rank 0 says stop."""
    from lorax_engine.core.factory import make_runner, num_kv_blocks
    from lorax_engine.core.inflight import PendingTokens
    from lorax_engine.core.kv_cache import allocate_kv_cache
    from lorax_engine.lora import LoraSlots
    from lorax_engine.models.loader import load_model

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s shard {rank} %(message)s")
    threading.Thread(
        target=_exit_with_parent, args=(launch.parent_pid,), name="parent-watch", daemon=True
    ).start()
    config = shard_device(launch.config, rank)
    device, dtype = config.torch_device, config.torch_dtype
    store = dist.TCPStore(  # pyright: ignore[reportPrivateImportUsage]
        "127.0.0.1", launch.store_port, config.num_shard, is_master=False, wait_for_workers=False
    )
    groups = join_group(rank, config.num_shard, store, device)
    tp, control = groups.tp, groups.control
    received: queue.Queue[ShardWeights | None] = queue.Queue()
    receiver = threading.Thread(
        target=_receive_adapters, args=(groups.adapters, received), name="adapters", daemon=True
    )
    receiver.start()
    model = load_model(
        launch.model_dir,
        dtype,
        device,
        config.limits.max_total_tokens,
        allow_bin=config.allow_bin_weights,
        quantize=config.quantize,
        tp=tp,
    )
    num_blocks = agree_num_blocks(num_kv_blocks(config, model), control)
    kind, num_slots = _receive(control)
    assert kind == "runner", kind
    slots = None
    if num_slots > 0:
        slots = LoraSlots.allocate(
            model.shard_lora_spec(),
            num_slots,
            config.lora_max_rank,
            config.torch_lora_dtype,
            device,
        )
    kv = allocate_kv_cache(
        model.shard_cfg, num_blocks, config.block_size, config.torch_kv_dtype, device
    )
    runner = make_runner(config, model, kv, slots)
    runner.capture_graphs()  # rank 0 captures the same graphs at the same time
    while True:
        message = _receive(control)
        kind = message[0]
        if kind == "step":
            _, host, rows, use_graph, num_pending = message
            pending = None
            if num_pending:
                ids = torch.empty(num_pending, dtype=torch.int64, device=device)
                dist.broadcast(ids, src=0, group=tp.group)
                pending = PendingTokens(ids, {})  # rows are already resolved in `host`
            runner.forward(host, rows, use_graph, pending)
        elif kind == "lora":
            _, slot = message
            weights = received.get()  # sent before the message: here or on its way
            assert slots is not None
            assert weights is not None
            slots.write_(slot, shard_lora_weights(weights, tp))
        elif kind == "stop":
            break
        else:
            raise RuntimeError(f"unknown control message {kind!r}")
    receiver.join()  # rank 0 ended it before saying stop
    dist.destroy_process_group()


def _receive_adapters(group: Any, received: queue.Queue[ShardWeights | None]) -> None:
    """Receive adapters as rank 0 promotes them, until it sends None."""
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=group)
        received.put(box[0])
        if box[0] is None:
            return


def _receive(control: Any) -> tuple[Any, ...]:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=control)
    return box[0]


def _exit_with_parent(parent_pid: int) -> None:
    """A shard outliving the engine would hold its GPU forever: leave when the parent is gone."""
    while os.getppid() == parent_pid:
        threading.Event().wait(1.0)
    os._exit(1)
