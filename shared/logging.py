"""Structured logging where every line passes the PHI redactor.

Use ``log = get_logger(__name__)`` and ``log.info("event name", extra={"fields": {...}})`` or
the :func:`kv` helper: ``log.info("call started", **kv(call=sid))``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

from shared.redact import redact, redact_value, sid_tag

_ALLOW_TEXT = False

# Every structured field name used in logs (``kv``), bus events (``Event.data``) and trace
# attributes, classified. tests/unit/test_security_fields.py fails when code uses a name that
# is not here; at runtime an unknown name is treated as ``redacted``.
#   safe:     ids, counts, timings, closed vocabularies (strings still pass the PHI redactor)
#   redacted: may carry PHI: shown as ``[TEXT len=N]`` unless LOG_TRANSCRIPTS (then redacted);
#             ``call``/``call_sid`` become a non-reversible tag
#   secret:   never shown
Classification = Literal["safe", "redacted", "secret"]
_SAFE = """
actions actor after_turn asked asr_ms attempt attempts audio_bytes audio_ms base_url calls
cancelled chunks cleared code confidence count decoders delay_s dropped dropped_segments duration_s
empty endpointing_ms error errors exporter failed fallback file gateway grace_s kind limit_frames
max_calls mcp_tools model ms name nats op outcome path provider rate reason reclaim redis replay_ms
replayed_frames resumed_segments retention_h retries retryable seconds segments seq service
since_speech_end_ms size
source speech_ms stage status stream_url synth_ms threads timeout_s tool tools topics turn turns
url utt utterance utterance_id vad variant voice_to_voice_ms why words worker worker_id
purpose amd answered_by call_status detection_ms dest
audio_s prompt_tokens completion_tokens chars cpu_s call_s direction schema_v currency prices_date
cost_total cost_asr cost_llm cost_tts cost_twilio asr_audio_s llm_prompt_tokens
llm_completion_tokens tts_chars twilio_s reports
min_window_s batch wait_ms pause_ms continues
"""  # ``utterance`` is an id in events; were it text, redact_value's TEXT_KEYS still hide it
_REDACTED = """
call call_sid text transcript heard_text digit digits caller from to phone email
"""
_SECRET = """
password token api_key authorization secret signature auth_token admin_token recording_key key
"""
FIELDS: dict[str, Classification] = {
    **dict.fromkeys(_SAFE.split(), "safe"),
    **dict.fromkeys(_REDACTED.split(), "redacted"),
    **dict.fromkeys(_SECRET.split(), "secret"),
}


def classify(name: str) -> Classification | None:
    """A field's classification, or None when it is not registered."""
    return FIELDS.get(name)


def field_value(key: str, value: Any, *, allow_text: bool = False) -> Any:
    """One structured field as it may be shown (see :data:`FIELDS`)."""
    if key in ("call", "call_sid") and isinstance(value, str):
        return sid_tag(value)
    cls = FIELDS.get(key)
    if cls == "safe":
        if isinstance(value, bool | int | float) or value is None:
            return value
        return redact_value(key, value, allow_text=allow_text)
    if cls == "secret":
        return "[SECRET]" if value else value
    # redacted, or unknown (treated as redacted)
    if allow_text:
        return redact_value(key, value, allow_text=True)
    if isinstance(value, str):
        return f"[TEXT len={len(value)}]"
    return "[REDACTED]" if value is not None else None


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
                name = "call" if k == "call_sid" else str(k)
                fields[name] = field_value(str(k), v, allow_text=_ALLOW_TEXT)
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
    for noisy in (
        "uvicorn.access",
        "httpx",
        "httpx2",
        "httpcore",
        "faststream.access",
        "botocore",  # logs response bodies (secrets) at DEBUG
        "boto3",
        "urllib3",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    """A stdlib logger; formatting and redaction come from :func:`setup_logging`."""
    return logging.getLogger(name)
