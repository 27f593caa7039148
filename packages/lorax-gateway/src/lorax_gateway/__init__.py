"""lorax-gateway: the LoRAX / OpenAI public API in front of pluggable engine backends."""

__version__ = "0.1.0"

from lorax_gateway.app import create_app
from lorax_gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "__version__", "create_app"]
