"""Assemble an EngineCore from an EngineConfig: load, size the KV pool, allocate, capture graphs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorax_engine.adapters.queues import AdapterQueues
from lorax_engine.config import EngineConfig
from lorax_engine.core.adapter_admission import AdapterAdmission
from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.kv_cache import (
    activation_reserve_bytes,
    allocate_kv_cache,
    kv_bytes_per_block,
)
from lorax_engine.core.model_runner import ModelRunner
from lorax_engine.core.request import Request
from lorax_engine.core.scheduler import Scheduler, SchedulerConfig
from lorax_engine.core.warm_up import warm_up
from lorax_engine.lora import LoraSlots
from lorax_engine.lora.spec import ModelLoraSpec
from lorax_engine.models.decoder import DecoderModel
from lorax_engine.models.loader import load_model, resolve_model_dir
from lorax_engine.structured import ConstraintFactory
from lorax_engine.tokenizer import TokenizerInfo

if TYPE_CHECKING:
    from lorax_engine.distributed.driver import ShardGroup

log = logging.getLogger(__name__)

# Without --max-batch-total-tokens on CPU: room for this many full-length requests.
_CPU_DEFAULT_REQUESTS = 16


class EngineStartupError(RuntimeError):
    """The engine cannot start with this model and configuration; the message says why."""


@dataclass(slots=True)
class LoadedEngine:
    core: EngineCore
    tokenizer: TokenizerInfo
    model_dir: Path
    adapter_manager: Any = None  # lorax_engine.adapters.AdapterManager when adapters are on
    shards: ShardGroup | None = None  # the worker shards with --num-shard > 1


def num_kv_blocks(config: EngineConfig, model: DecoderModel) -> int:
    """Blocks in the pool: from --max-batch-total-tokens, else from free device memory (for this
    shard's KV heads: with tensor parallelism each shard holds its part of every block)."""
    bs = config.block_size
    if config.max_batch_total_tokens is not None:
        return -(-config.max_batch_total_tokens // bs)
    device = config.torch_device
    if device.type != "cuda":
        return -(-_CPU_DEFAULT_REQUESTS * config.limits.max_total_tokens // bs)
    free, total = torch.cuda.mem_get_info(device)
    # Blocks our allocator caches but no tensor holds (freed load-time buffers, an engine built
    # and dropped earlier in the process) are ours to reuse, not memory in use.
    cached_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    in_use = total - free - cached_free
    reserve = activation_reserve_bytes(
        model.shard_cfg, config.max_batch_prefill_tokens, config.max_batch_size, config.torch_dtype
    )
    budget = int(total * config.gpu_memory_fraction) - in_use - reserve
    blocks = budget // kv_bytes_per_block(model.shard_cfg, bs, config.torch_kv_dtype)
    needed = -(-config.limits.max_total_tokens // bs)
    if blocks < needed:
        raise RuntimeError(
            f"not enough GPU memory for one request of max_total_tokens={config.limits.max_total_tokens} "
            f"({blocks} KV blocks fit, {needed} needed)"
        )
    return int(blocks)


def constraint_factory(config: EngineConfig, tokenizer: TokenizerInfo) -> ConstraintFactory | None:
    """The one `ConstraintFactory` of the engine (None when structured output is off).

    Building it checks that the grammar engine reads the tokenizer the way the detokenizer
    prints it, so a tokenizer that cannot be constrained fails the start-up, not a request.

    Raises:
        EngineStartupError: the tokenizer cannot be constrained.
    """
    if config.structured_output is None:
        return None
    try:
        # Every id that ends generation may end a complete document (a model can have several).
        return ConstraintFactory(
            tokenizer.tokenizer,
            config.structured_output,
            stop_token_ids=sorted(tokenizer.eos_token_ids),
        )
    except (ValueError, TypeError) as exc:  # TokenizerMappingError is a ValueError
        raise EngineStartupError(
            f"structured output (response_format) cannot use the tokenizer of "
            f"{config.model_id!r}: {exc}. Start with --disable-structured-output to serve "
            "this model without response_format."
        ) from exc


def make_runner(
    config: EngineConfig,
    model: DecoderModel,
    kv: list[tuple[torch.Tensor, torch.Tensor]],
    slots: LoraSlots | None,
) -> ModelRunner:
    """The model runner over an allocated KV pool (every shard builds its own the same way)."""
    bs = config.block_size
    return ModelRunner(
        model,
        kv,
        block_size=bs,
        max_num_seqs=config.max_batch_size,
        max_num_tokens=max(config.max_batch_prefill_tokens, config.max_batch_size),
        max_blocks_per_seq=-(-config.limits.max_total_tokens // bs),
        lora_slots=slots,
        use_cuda_graphs=config.torch_device.type == "cuda" and not config.eager,
    )


def build_engine(
    config: EngineConfig,
    model: DecoderModel,
    tokenizer: TokenizerInfo,
    model_dir: Path,
    shards: ShardGroup | None = None,
) -> LoadedEngine:
    """Wire a loaded model into a runnable core (the part benchmarks reuse with random weights).

    ``shards``: ``model`` is rank 0's shard; the workers build their runners in step with it.

    Raises:
        EngineStartupError: the tokenizer cannot be used for structured output.
    """
    # First: a tokenizer problem must not wait behind KV allocation and graph capture.
    constraints = constraint_factory(config, tokenizer)
    device = config.torch_device
    bs = config.block_size
    slots = None
    if config.lora_slots > 0:
        # Before the KV pool, which is sized from the memory left.
        num_slots = num_lora_slots(config, model.shard_lora_spec(), _memory_bytes(device))
        slots = LoraSlots.allocate(
            model.shard_lora_spec(),
            num_slots,
            config.lora_max_rank,
            config.torch_lora_dtype,
            device,
        )
    blocks = num_kv_blocks(config, model)
    if shards is not None:
        blocks = shards.agree_num_blocks(blocks)
    if blocks * bs < config.limits.max_total_tokens:
        raise ValueError("the KV pool must hold at least one request of max_total_tokens")
    log.info("KV cache: %d blocks of %d tokens (%d tokens)", blocks, bs, blocks * bs)
    kv = allocate_kv_cache(model.shard_cfg, blocks, bs, config.torch_kv_dtype, device)
    runner = make_runner(config, model, kv, slots)
    if shards is not None:
        shards.start_runners(runner)
    runner.capture_graphs()
    warm_up(runner, model.cfg.vocab_size)
    queues = None
    if slots is not None:
        # One active adapter per slot: those admit requests, time-sliced while others wait.
        queues = AdapterQueues[Request](slots.num_slots, config.adapter_cycle_time_s)
    scheduler = Scheduler(
        SchedulerConfig(config.max_batch_prefill_tokens, config.max_batch_size),
        BlockManager(blocks, bs),
        adapter_queues=queues,
    )
    core = EngineCore(
        scheduler, runner, tokenizer.tokenizer, tokenizer.eos_token_ids, constraints=constraints
    )
    manager = None
    if slots is not None:
        writer = slots if shards is None else shards.slot_writer(slots)
        manager = _adapter_manager(config, model, writer, model_dir, core.wake)
        core.attach_adapters(AdapterAdmission(manager, priority=scheduler.adapter_priority))
    return LoadedEngine(core, tokenizer, model_dir, manager, shards)


def num_lora_slots(config: EngineConfig, spec: ModelLoraSpec, memory_bytes: int) -> int:
    """``--max-active-adapters``, lowered to what ``--adapter-memory-fraction`` of the device's
    memory holds at ``--max-lora-rank``.

    Raises:
        EngineStartupError: not even one slot fits.
    """
    per_slot = LoraSlots.bytes_per_slot(spec, config.lora_max_rank, config.torch_lora_dtype)
    budget = int(memory_bytes * config.adapter_memory_fraction)
    fit = budget // per_slot
    if fit < 1:
        raise EngineStartupError(
            f"one adapter slot of rank {config.lora_max_rank} needs {per_slot / 2**20:.1f} MiB, "
            f"--adapter-memory-fraction {config.adapter_memory_fraction} allows "
            f"{budget / 2**20:.1f} MiB: raise it or lower --max-lora-rank"
        )
    if fit < config.lora_slots:
        log.warning(
            "--max-active-adapters %d lowered to %d: each slot takes %.1f MiB at rank %d and "
            "--adapter-memory-fraction %s allows %.1f MiB",
            config.lora_slots,
            fit,
            per_slot / 2**20,
            config.lora_max_rank,
            config.adapter_memory_fraction,
            budget / 2**20,
        )
    return min(config.lora_slots, fit)


def _memory_bytes(device: torch.device) -> int:
    """Total memory of the device the slot tables live on (host RAM for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _adapter_manager(
    config: EngineConfig,
    model: DecoderModel,
    slots: Any,
    model_dir: Path,
    wake: Callable[[], None],
) -> Any:
    """Sources (hub; local only under the configured roots and the demo's own adapters; s3) ->
    loader -> manager over the runner's slot tables."""
    from lorax_engine.adapters import (
        AdapterLoader,
        AdapterManager,
        HostAdapterCache,
        HubSource,
        LoadLimits,
        LocalSource,
        ManagerConfig,
        S3Source,
        SourceRegistry,
    )

    roots = [Path(r) for r in config.local_adapter_roots]
    if config.model_id == "demo":
        roots.append(model_dir / "adapters")
    limits = LoadLimits(max_rank=config.lora_max_rank, max_bytes=config.adapter_max_bytes)
    sources = SourceRegistry(
        {
            "hub": HubSource(config.cache_dir),
            "local": LocalSource(roots),
            # Endpoint, region and credentials from boto3's own chain (AWS_ENDPOINT_URL,
            # AWS_* variables, ~/.aws/config, instance role): what every AWS tool reads.
            "s3": S3Source(_adapter_cache_dir(config) / "s3", max_bytes=limits.max_bytes),
        }
    )
    loader = AdapterLoader(
        sources,
        model.lora_spec(),
        limits,
        HostAdapterCache(config.adapter_host_cache_bytes, pin=config.torch_device.type == "cuda"),
        dtype=config.torch_dtype,
        timeout_s=config.adapter_load_timeout_s,
    )
    manager = AdapterManager(
        loader,
        slots,
        ManagerConfig(num_slots=slots.num_slots, cycle_time_s=config.adapter_cycle_time_s),
        device=config.torch_device,
        wake=wake,
    )
    if config.preloaded_adapter_ids:
        _preload(manager, config)
    return manager


def _preload(manager: Any, config: EngineConfig) -> None:
    """Load ``--preloaded-adapter-ids`` now; a bad one fails the start with its reason."""
    from lorax_engine.adapters import AdapterError, AdapterRef

    refs = []
    try:
        for adapter_id in config.preloaded_adapter_ids:
            refs.append(
                AdapterRef.from_parameters(
                    {"adapter_id": adapter_id}, tenant=None, default_source=config.adapter_source
                )
            )
        manager.preload(refs)
    except AdapterError as exc:
        manager.shutdown()
        raise EngineStartupError(f"preloading adapters: {exc.message}") from None
    log.info("preloaded adapters: %s", ", ".join(config.preloaded_adapter_ids))


def _adapter_cache_dir(config: EngineConfig) -> Path:
    """Where downloaded adapters are kept: under --cache-dir, else the user's cache directory."""
    if config.cache_dir is not None:
        return Path(config.cache_dir) / "lorax-adapters"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lorax" / "adapters"


def load_engine(config: EngineConfig) -> LoadedEngine:
    """Resolve ``config.model_id``, load tokenizer and weights, and build the core."""
    model_dir = resolve_model_dir(
        config.model_id,
        revision=config.revision,
        cache_dir=config.cache_dir,
        allow_bin=config.allow_bin_weights,
    )
    max_positions = config.limits.max_total_tokens
    shards = None
    if config.num_shard > 1:
        from lorax_engine.distributed.driver import ShardGroup, check_launchable

        try:
            check_launchable(config, model_dir)
        except ValueError as exc:
            raise EngineStartupError(str(exc)) from None
        shards = ShardGroup.launch(config, model_dir)
    model = load_model(
        model_dir,
        config.torch_dtype,
        config.torch_device,
        max_positions,
        allow_bin=config.allow_bin_weights,
        quantize=config.quantize,
        tp=None if shards is None else shards.tp,
    )
    tokenizer = TokenizerInfo(model_dir, model.cfg.eos_token_ids)
    return build_engine(config, model, tokenizer, model_dir, shards)
