"""``voiceagent replay CALL_SID``: a finished call from the ``VOICE_EVENTS`` stream, like tail.

Audio is not stored, so a replay shows events, control, transcripts and replies in publish order
(stream sequence). Text is redacted unless ``--show-text``; showing it is an access to PHI and
is written to the audit trail first (no audit record, no text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nats.aio.client import Client as NATS

from shared.callevents import StoredMessage, read_call
from voiceagent.tail import TailOptions, format_if_shown


def replay_lines(messages: Iterable[StoredMessage], opts: TailOptions) -> list[str]:
    """The tail lines of stored messages, in stream order, filtered by ``opts``."""
    ordered = sorted(messages, key=lambda m: m.seq)
    lines = (format_if_shown(m.subject, m.headers, m.data, opts) for m in ordered)
    return [line for line in lines if line is not None]


async def replay(
    nc: NATS, call_sid: str, opts: TailOptions, *, out: Callable[[str], None] = print
) -> int:
    """Print one stored call; the number of stored messages (0: nothing kept for that SID)."""
    messages = await read_call(nc, call_sid)
    for line in replay_lines(messages, opts):
        out(line)
    return len(messages)
