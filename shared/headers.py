"""NATS headers of audio messages (audio crosses the bus as raw bytes): names and the one codec.

Every publisher builds them with :func:`audio_in_headers` / :func:`audio_out_headers`, every
reader parses them with :func:`parse_audio_in` / :func:`parse_audio_out`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SCHEMA = "Va-Schema"  # e.g. "audio.out/1": what the payload is, and its version
SEQ = "Va-Seq"  # frame counter of the inbound stream (Twilio chunk number)
TS_MS = "Va-Ts"  # Twilio media timestamp, ms since stream start
SENT_NS = "Va-Sent"  # time.time_ns() when the publisher sent it (latency measurement)
TURN = "Va-Turn"  # reply turn id
SEG = "Va-Seg"  # segment sequence number inside a turn
CHUNK = "Va-Chunk"  # chunk index inside a segment
LAST = "Va-Last"  # "1" on the last chunk of a segment (may carry empty payload)
ENCODING = "Va-Enc"  # always "mulaw/8000" today
SERVICE = "Va-Svc"  # publishing service name
TRACEPARENT = "traceparent"  # W3C trace context

# audio.in/1 carries no Va-Schema: the subject implies it, and every header costs the ASR
# worker's intake (nats-py parses headers in Python) ~1.5 us per frame. A later version adds it.
AUDIO_OUT_SCHEMA = "audio.out/1"
MULAW_8K = "mulaw/8000"


@dataclass(frozen=True, slots=True)
class AudioIn:
    """Metadata of one ``audio.in`` frame (the caller's audio, gateway to ASR)."""

    seq: int | None  # Twilio chunk number
    ts_ms: int | None  # Twilio media timestamp
    sent_ns: int | None  # publisher's time.time_ns()
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class AudioOut:
    """Metadata of one ``audio.out`` chunk (reply audio, TTS to gateway)."""

    turn: int
    seg: int
    chunk: int
    last: bool
    service: str | None = None
    sent_ns: int | None = None
    traceparent: str | None = None


def audio_in_headers(
    *, seq: str, ts_ms: str, sent_ns: int, traceparent: str | None = None
) -> dict[str, str]:
    """NATS headers of one ``audio.in`` frame (strings as Twilio sent them: the hot path)."""
    h = {SEQ: seq, TS_MS: ts_ms, SENT_NS: str(sent_ns)}
    if traceparent:
        h[TRACEPARENT] = traceparent
    return h


def parse_audio_in(headers: Mapping[str, str] | None) -> AudioIn:
    """The metadata of an ``audio.in`` frame; ``ValueError`` when a header is not a number."""
    if not headers:
        return AudioIn(seq=None, ts_ms=None, sent_ns=None)
    seq, ts, sent = headers.get(SEQ), headers.get(TS_MS), headers.get(SENT_NS)
    return AudioIn(
        seq=int(seq) if seq else None,
        ts_ms=int(ts) if ts else None,
        sent_ns=int(sent) if sent else None,
        traceparent=headers.get(TRACEPARENT),
    )


def audio_out_headers(meta: AudioOut) -> dict[str, str]:
    """NATS headers of one ``audio.out`` chunk."""
    h = {
        SCHEMA: AUDIO_OUT_SCHEMA,
        TURN: str(meta.turn),
        SEG: str(meta.seg),
        CHUNK: str(meta.chunk),
        ENCODING: MULAW_8K,
    }
    if meta.service:
        h[SERVICE] = meta.service
    if meta.sent_ns is not None:
        h[SENT_NS] = str(meta.sent_ns)
    if meta.last:
        h[LAST] = "1"
    if meta.traceparent:
        h[TRACEPARENT] = meta.traceparent
    return h


def parse_audio_out(headers: Mapping[str, str] | None) -> AudioOut:
    """The metadata of an ``audio.out`` chunk; ``ValueError`` if missing, non-numeric or < 0."""
    h = headers or {}
    try:
        turn, seg, chunk = int(h[TURN]), int(h[SEG]), int(h.get(CHUNK, "0"))
    except KeyError as e:
        raise ValueError(f"missing header {e}") from None
    if turn < 0 or seg < 0 or chunk < 0:
        raise ValueError("negative turn, segment or chunk")
    sent = h.get(SENT_NS)
    return AudioOut(
        turn=turn,
        seg=seg,
        chunk=chunk,
        last=h.get(LAST) == "1",
        service=h.get(SERVICE),
        sent_ns=int(sent) if sent else None,
        traceparent=h.get(TRACEPARENT),
    )
