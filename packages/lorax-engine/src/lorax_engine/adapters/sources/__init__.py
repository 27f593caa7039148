"""Where adapters come from: the Hugging Face Hub, local directories under configured roots, S3."""

from lorax_engine.adapters.sources.base import AdapterSource, FetchedAdapter, SourceRegistry
from lorax_engine.adapters.sources.hub import HubSource
from lorax_engine.adapters.sources.local import LocalSource
from lorax_engine.adapters.sources.s3 import S3Source

__all__ = [
    "AdapterSource",
    "FetchedAdapter",
    "HubSource",
    "LocalSource",
    "S3Source",
    "SourceRegistry",
]
