"""Prometheus metrics shared by every service (one definition each)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)

BUS_RECONNECTS = Counter("voice_bus_reconnects_total", "NATS reconnections")
ACTIVE_CALLS = Gauge("voice_active_calls", "Calls this process holds", ["service"])
FRAMES = Counter("voice_frames_total", "Audio frames", ["service", "direction"])
FRAMES_DROPPED = Counter(
    "voice_frames_dropped_total", "Audio frames dropped", ["service", "reason"]
)
SLOW_CONSUMER_DROPS = Counter(
    "voice_slow_consumer_drops_total",
    "Messages nats-py dropped because a subscription's pending limit was reached",
    ["subject"],
)
BAD_MESSAGES = Counter(
    "voice_bad_messages_total", "Malformed messages dropped", ["service", "source"]
)
STREAM_DROPS = Counter(
    "voice_stream_messages_dropped_total",
    "Media-stream messages dropped by the gateway's per-stream rate limits",
    ["service", "kind"],
)
STAGE_LATENCY = Histogram(
    "voice_stage_seconds",
    "Per-stage latency (endpointing, asr_final, agent_first_sentence, tts_first_audio, ...)",
    ["service", "stage"],
    buckets=_LATENCY_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    "voice_provider_errors_total", "Provider errors", ["service", "provider", "kind"]
)
TTS_CACHE = Counter(
    "voice_tts_cache_total", "TTS prompt cache lookups (hit, miss, stored, error)", ["result"]
)
PROVIDER_RETRIES = Counter(
    "voice_provider_retries_total", "Provider retries", ["service", "provider"]
)
SPEND = Counter(
    "voice_spend_total",
    "Money spent on calls (PRICES_FILE currency), by stage (asr, llm, tts, twilio) and provider",
    ["stage", "provider"],
)
