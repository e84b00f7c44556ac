"""NATS header names for audio messages (audio crosses the bus as raw bytes)."""

from __future__ import annotations

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
