"""The one prologue of a bus handler: parse the body, check it names its subject's call, count.

A body naming another call than its subject is forged or broken: it is never acted on. Bad
messages are counted in ``va_bad_messages_total`` and logged without their content (PHI).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import ValidationError

from shared import subjects
from shared.logging import kv
from shared.messages import BusMessage
from shared.metrics import BAD_MESSAGES

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BusMessage)


def parse_for_subject(
    parse: Callable[[bytes], M], body: bytes, subject: str, *, service: str, source: str
) -> M | None:
    """What ``parse`` reads from ``body`` if it names ``subject``'s call, else ``None``."""
    try:
        message = parse(body)
        if message.call_sid != subjects.call_sid_of(subject):
            raise ValueError("call sid does not match the subject")
    except (ValidationError, ValueError) as e:
        bad_message(service=service, source=source, error=e)
        return None
    return message


def bad_message(*, service: str, source: str, error: Exception) -> None:
    """Count and log (type only) a message dropped as malformed."""
    BAD_MESSAGES.labels(service, source).inc()
    log.warning("bad message dropped", **kv(source=source, error=type(error).__name__))
