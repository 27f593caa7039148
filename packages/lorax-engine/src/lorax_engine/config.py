"""Engine configuration: the ``lorax-engine serve`` flags, validated once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorax_engine.params import Limits
from lorax_engine.quant.spec import QUANTIZE_METHODS
from lorax_engine.structured.config import StructuredOutputConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# KV cache formats: "auto" stores K/V in the model's dtype; "fp8" in float8 e4m3 with a scale of 1.0
# (no calibration, as vLLM-style engines do without a scales file): half the bytes per block, so
# the pool holds twice the tokens from the same memory. Values past ±448 are clamped.
KV_CACHE_DTYPES = ("auto", "fp8")
# Adapter slot tables: "auto" stores them in the model's dtype; "fp8" in float8 e4m3 with one
# scale per layer and projection for A and one for B, set when an adapter is promoted: half the
# adapter bytes a decode step reads, and twice the slots in the same memory.
LORA_DTYPES = ("auto", "fp8")


@dataclass(slots=True)
class EngineConfig:
    """What to load and how to run it."""

    model_id: str = "demo"
    revision: str | None = None
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    device: str | None = None  # None: cuda if available
    limits: Limits = field(default_factory=Limits)
    max_batch_prefill_tokens: int = 4096
    max_batch_total_tokens: int | None = None  # KV pool size in tokens; None: sized from memory
    max_batch_size: int = 256
    block_size: int = 16
    kv_cache_dtype: str = "auto"  # one of KV_CACHE_DTYPES
    gpu_memory_fraction: float = 0.9
    eager: bool = False  # no CUDA graphs
    # Tensor parallelism: shard the model over this many GPUs of the host (processes on CPU).
    num_shard: int = 1
    allow_bin_weights: bool = False
    # Base weights: None serves the checkpoint as it is (GPTQ/AWQ ones quantized), or one of
    # quant.QUANTIZE_METHODS (fp8, gptq, awq, bitsandbytes, bitsandbytes-nf4, bitsandbytes-fp4).
    quantize: str | None = None
    cache_dir: Path | None = None
    # Multi-LoRA slot tables: 0 disables adapters (requests naming one get a generation error).
    lora_slots: int = 0
    lora_max_rank: int = 64
    lora_dtype: str = "auto"  # one of LORA_DTYPES
    adapter_source: str = ""  # default source of adapter ids; "": hub (local for the demo)
    # The only directories `local` adapters load from, tried in order (none: local is off).
    local_adapter_roots: Sequence[Path | str] = ()
    adapter_host_cache_bytes: int = 4 << 30  # CPU tier of loaded adapters
    # Loaded (from adapter_source) and put in free slots at start-up; dynamic loading stays on.
    preloaded_adapter_ids: Sequence[str] = ()
    # How long an adapter admits requests (and holds its slot) while other adapters wait.
    adapter_cycle_time_s: float = 2.0
    # Wall-clock bound on fetching and validating one adapter: past it, its requests fail (424).
    adapter_load_timeout_s: float = 120.0
    # Share of device memory (host memory on CPU) the slot tables may take: can lower lora_slots.
    adapter_memory_fraction: float = 0.1
    adapter_max_bytes: int = 2 << 30  # largest adapter weights file accepted
    # Constrained decoding (`response_format`); None serves without it (a tokenizer the grammar
    # engine cannot read then does not stop the engine from starting).
    structured_output: StructuredOutputConfig | None = field(default_factory=StructuredOutputConfig)

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        if self.quantize is not None and self.quantize not in QUANTIZE_METHODS:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_METHODS)}")
        if self.num_shard < 1:
            raise ValueError("num_shard must be >= 1")
        if self.num_shard > 1 and self.device not in (None, "cuda", "cpu"):
            raise ValueError("with num_shard > 1 the device is cuda or cpu: shard r uses GPU r")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}")
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.max_batch_prefill_tokens <= 0:
            # Prompts longer than this are prefilled in chunks, so any positive budget works.
            raise ValueError("max_batch_prefill_tokens must be positive")
        if (
            self.max_batch_total_tokens is not None
            and self.max_batch_total_tokens < self.limits.max_total_tokens
        ):
            raise ValueError("max_batch_total_tokens must be >= max_total_tokens")
        if not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError("gpu_memory_fraction must be in (0, 1]")
        if self.lora_slots < 0 or self.lora_max_rank <= 0:
            raise ValueError("lora_slots must be >= 0 and lora_max_rank > 0")
        if self.lora_dtype not in LORA_DTYPES:
            raise ValueError(
                f"lora_dtype must be one of {', '.join(LORA_DTYPES)}, got {self.lora_dtype!r}"
            )
        if isinstance(self.local_adapter_roots, (str, Path)):  # one root, not its characters
            self.local_adapter_roots = (self.local_adapter_roots,)
        self.local_adapter_roots = tuple(Path(r) for r in self.local_adapter_roots)
        if isinstance(self.preloaded_adapter_ids, str):
            self.preloaded_adapter_ids = (self.preloaded_adapter_ids,)
        self.preloaded_adapter_ids = tuple(self.preloaded_adapter_ids)
        if self.preloaded_adapter_ids and self.lora_slots == 0:
            raise ValueError("preloaded_adapter_ids need adapters enabled (lora_slots > 0)")
        if self.adapter_cycle_time_s < 0:
            raise ValueError("adapter_cycle_time_s must be >= 0")
        if self.adapter_load_timeout_s <= 0:
            raise ValueError("adapter_load_timeout_s must be positive")
        if not 0 < self.adapter_memory_fraction <= 1:
            raise ValueError("adapter_memory_fraction must be in (0, 1]")
        if self.adapter_max_bytes <= 0:
            raise ValueError("adapter_max_bytes must be positive")
        self.max_batch_size = min(self.max_batch_size, self.max_batch_prefill_tokens)
        if not self.adapter_source:
            self.adapter_source = "local" if self.model_id == "demo" else "hub"
        if self.adapter_source not in ("hub", "local", "s3"):
            raise ValueError("adapter_source must be hub, local or s3")

    @property
    def torch_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return DTYPES[self.dtype]
        return torch.float32 if self.torch_device.type == "cpu" else torch.bfloat16

    @property
    def torch_kv_dtype(self) -> torch.dtype:
        """The KV cache's element type: the model's dtype, or float8 e4m3 for ``fp8``."""
        if self.kv_cache_dtype == "fp8":
            return torch.float8_e4m3fn
        return self.torch_dtype

    @property
    def torch_lora_dtype(self) -> torch.dtype:
        """The adapter slot tables' element type: the model's dtype, or float8 e4m3 for ``fp8``."""
        if self.lora_dtype == "fp8":
            return torch.float8_e4m3fn
        return self.torch_dtype
