"""Structured logging where every line passes the PHI redactor.

Use ``log = get_logger(__name__)`` and ``log.info("event name", extra={"fields": {...}})`` or
the :func:`kv` helper: ``log.info("call started", **kv(call=sid))``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from shared.redact import redact, redact_value, sid_tag

_ALLOW_TEXT = False


def kv(**fields: Any) -> dict[str, Any]:
    """Structured fields for a log call: ``log.info("msg", **kv(a=1))``."""
    return {"extra": {"fields": fields}}


class RedactingFormatter(logging.Formatter):
    """JSON (or text) lines whose message and fields are redacted."""

    def __init__(self, *, service: str, json_lines: bool = True) -> None:
        super().__init__()
        self.service = service
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {}
        raw = getattr(record, "fields", None)
        if isinstance(raw, dict):
            for k, v in raw.items():
                if k in ("call", "call_sid") and isinstance(v, str):
                    fields["call"] = sid_tag(v)
                else:
                    fields[k] = redact_value(k, v, allow_text=_ALLOW_TEXT)
        msg = redact(record.getMessage())
        if record.exc_info:
            # Exception text can quote user input: redact it too.
            fields["exc"] = redact(self.formatException(record.exc_info))
        if self.json_lines:
            line = {
                "ts": round(time.time(), 3),
                "level": record.levelname.lower(),
                "service": self.service,
                "logger": record.name,
                "msg": msg,
                **fields,
            }
            return json.dumps(line, default=str)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{record.levelname[0]} {self.service} {record.name}: {msg} {extra}".rstrip()


def setup_logging(
    *, service: str, level: str = "INFO", json_lines: bool = True, allow_text: bool = False
) -> None:
    """Install the redacting formatter on the root logger (call once per process)."""
    global _ALLOW_TEXT
    _ALLOW_TEXT = allow_text
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(service=service, json_lines=json_lines))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log request lines or payloads would bypass our field redaction.
    for noisy in ("uvicorn.access", "httpx", "httpx2", "httpcore", "faststream.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    """A stdlib logger; formatting and redaction come from :func:`setup_logging`."""
    return logging.getLogger(name)
