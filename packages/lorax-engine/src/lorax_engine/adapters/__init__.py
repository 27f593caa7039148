"""Dynamic LoRA adapters: sources, PEFT loading and validation, merging, CPU and GPU tiers."""

from lorax_engine.adapters.errors import (
    AdapterError,
    AdapterIncompatibleError,
    AdapterLoadError,
    AdapterNotFoundError,
    AdapterRequestError,
)
from lorax_engine.adapters.host_cache import HostAdapterCache
from lorax_engine.adapters.loader import AdapterLoader
from lorax_engine.adapters.manager import AdapterHandle, AdapterManager, AdapterState, ManagerConfig
from lorax_engine.adapters.merge import merge_adapters
from lorax_engine.adapters.peft_loader import LoadLimits, load_peft_lora
from lorax_engine.adapters.queues import AdapterQueues
from lorax_engine.adapters.ref import AdapterRef, MergeSpec
from lorax_engine.adapters.sources import HubSource, LocalSource, S3Source, SourceRegistry
from lorax_engine.adapters.weights import LoraWeights

__all__ = [
    "AdapterError",
    "AdapterHandle",
    "AdapterIncompatibleError",
    "AdapterLoadError",
    "AdapterLoader",
    "AdapterManager",
    "AdapterNotFoundError",
    "AdapterQueues",
    "AdapterRef",
    "AdapterRequestError",
    "AdapterState",
    "HostAdapterCache",
    "HubSource",
    "LoadLimits",
    "LocalSource",
    "LoraWeights",
    "ManagerConfig",
    "MergeSpec",
    "S3Source",
    "SourceRegistry",
    "load_peft_lora",
    "merge_adapters",
]
