"""Logging setup: plain text or one JSON object per line (DESIGN.md §7).

Call-related log lines pass `extra={"call_uuid": ..., "tenant": ...}`; both formats show them.
Secrets are never passed to loggers in the first place (config prints masked values only).
"""
from __future__ import annotations

import json
import logging
import sys
import time

_CALL_FIELDS = ("call_uuid", "tenant", "carrier")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in _CALL_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                payload[field] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = " ".join(f"{f}={getattr(record, f)}" for f in _CALL_FIELDS
                        if getattr(record, f, None) is not None)
        return f"{line} [{tags}]" if tags else line


def setup_logging(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
