"""Logging set-up: plain text or one JSON object per line (``--json-output``).

Request logs carry the request id, tenant id and adapter id, never API keys or ``api_token``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from lorax_gateway.settings import LoggingConfig

#: LogRecord attributes of the stdlib, so everything else on a record is treated as an extra.
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_STD_ATTRS.add("color_message")  # uvicorn's ANSI-coloured copy of the message


class JsonFormatter(logging.Formatter):
    """One JSON object per record with time, level, logger, message and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` with the record's extras."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STD_ATTRS and not k.startswith("_") and v is not None
        )
        line = super().format(record)
        return f"{line} {extras}" if extras else line


def configure_logging(config: LoggingConfig) -> None:
    """Install the handler on the ``lorax_gateway`` logger (and uvicorn's, for one format)."""
    handler = logging.StreamHandler(sys.stderr)
    if config.json_output:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    for name in ("lorax_gateway", "uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers = [handler]
        log.setLevel(config.level.upper())
        log.propagate = False
