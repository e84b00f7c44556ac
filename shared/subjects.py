"""NATS subject names, defined once.

Every per-call subject lives under ``voice.<call_sid>.`` so ``nats sub 'voice.CA123.>'`` shows a
whole call. Cluster-wide work distribution (claims, heartbeats) lives under ``voice._sys.``, which
can never collide with a call SID (Twilio SIDs are alphanumeric).
"""

from __future__ import annotations

import re

PREFIX = "voice"
SYS = f"{PREFIX}._sys"

_SID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _checked(call_sid: str) -> str:
    # A SID with '.', '*' or '>' would address other calls' subjects.
    if not _SID_RE.fullmatch(call_sid):
        raise ValueError("invalid call sid for a subject")
    return call_sid


def call_root(call_sid: str) -> str:
    """``voice.<call>``: prefix of every subject of one call."""
    return f"{PREFIX}.{_checked(call_sid)}"


def call_all(call_sid: str) -> str:
    """``voice.<call>.>``: everything on one call (for tailing)."""
    return f"{call_root(call_sid)}.>"


_TOKEN_BAD = re.compile(r"[^A-Za-z0-9_-]")


def worker_token(worker_id: str) -> str:
    """A worker id as one subject token (host names may hold dots)."""
    return _TOKEN_BAD.sub("_", worker_id)[:128] or "_"


def audio_in(call_sid: str, worker_id: str) -> str:
    """Caller audio, gateway -> the ASR worker holding the call: raw 8 kHz mu-law bytes,
    metadata in headers: ``voice.<call>.audio.in.<worker>``.

    Addressed to the worker so it takes in all its calls' audio on one subscription
    (:func:`worker_audio_in`): one per call cost it a task hand-off per frame (docs/subjects.md).
    """
    return f"{call_root(call_sid)}.audio.in.{worker_token(worker_id)}"


def audio_in_any(call_sid: str) -> str:
    """``voice.<call>.audio.in.*``: one call's caller audio, whichever worker holds it (taps)."""
    return f"{call_root(call_sid)}.audio.in.*"


def worker_audio_in(worker_id: str) -> str:
    """``voice.*.audio.in.<worker>``: the audio of every call one ASR worker holds."""
    return f"{PREFIX}.*.audio.in.{worker_token(worker_id)}"


def transcript(call_sid: str) -> str:
    """ASR -> agent (and gateway): speech start/stop, interim and final transcripts, DTMF."""
    return f"{call_root(call_sid)}.transcript"


def reply(call_sid: str) -> str:
    """Agent -> TTS (and gateway): one sentence segment of a turn's reply."""
    return f"{call_root(call_sid)}.reply"


def audio_out(call_sid: str) -> str:
    """TTS -> gateway: raw 8 kHz mu-law bytes of one segment, metadata in headers."""
    return f"{call_root(call_sid)}.audio.out"


def control(call_sid: str) -> str:
    """Gateway and agent -> everyone on the call: start, end, interrupt, hangup, transfer,
    dtmf, played, prompt. NATS lets no other service publish here (deploy/nats/auth.conf)."""
    return f"{call_root(call_sid)}.control"


def asr_control(call_sid: str) -> str:
    """ASR -> agent (queue group) and the call's tailers: ``StageFailed`` of the recognizer.

    Its own subject so the ASR user needs no right on :func:`control`, where ``Transfer`` and
    ``Hangup`` travel (docs/security.md)."""
    return f"{call_root(call_sid)}.control.asr"


def events(call_sid: str) -> str:
    """Every service: lifecycle and per-stage timings (what ``voiceagent tail`` shows)."""
    return f"{call_root(call_sid)}.events"


def retry_turn(call_sid: str) -> str:
    """Gateway -> agent (queue group): a final transcript sent again, no reply having started
    (failover of a lost turn, see docs/failover.md)."""
    return f"{call_root(call_sid)}.retry.turn"


def retry_segment(call_sid: str) -> str:
    """Gateway -> TTS (queue group): a reply segment sent again, its audio having stalled
    (failover of a lost synthesis, see docs/failover.md)."""
    return f"{call_root(call_sid)}.retry.segment"


# Wildcards used by worker subscriptions (one subscription serves every call).
ALL_AUDIO_IN = f"{PREFIX}.*.audio.in.*"
ALL_RETRY_TURN = f"{PREFIX}.*.retry.turn"
ALL_RETRY_SEGMENT = f"{PREFIX}.*.retry.segment"
ALL_TRANSCRIPT = f"{PREFIX}.*.transcript"
ALL_REPLY = f"{PREFIX}.*.reply"
ALL_CONTROL = f"{PREFIX}.*.control"
ALL_ASR_CONTROL = f"{PREFIX}.*.control.asr"
ALL_EVENTS = f"{PREFIX}.*.events"
ALL_CALLS = f"{PREFIX}.>"

# ASR claim protocol (see docs/subjects.md): request/reply to a queue group.
ASR_CLAIM = f"{SYS}.asr.claim"


def asr_heartbeat(call_sid: str) -> str:
    """ASR worker -> gateway: 'I still hold this call' (see docs/subjects.md)."""
    return f"{SYS}.asr.heartbeat.{_checked(call_sid)}"


def turn_heartbeat(call_sid: str) -> str:
    """Agent replica -> gateway: 'I am answering this utterance' (see docs/failover.md)."""
    return f"{SYS}.agent.heartbeat.{_checked(call_sid)}"


# Audit trail (HIPAA 164.312(b)): who read or exported call data, IDs only. Outside ``voice.``
# so call tailers never see it and NATS permissions can grant it separately.
AUDIT_PREFIX = "audit"
AUDIT_ALL = f"{AUDIT_PREFIX}.>"
AUDIT_STREAM = "VOICE_AUDIT"


def audit(action: str) -> str:
    """``audit.<action>``: one audit record (``transcript.export``, ``recording.read``, ...)."""
    if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", action):
        raise ValueError("invalid audit action")
    return f"{AUDIT_PREFIX}.{action}"


# Call event store (JetStream, see shared/callevents.py): everything but audio, for replay.
EVENTS_STREAM = "VOICE_EVENTS"
EVENTS_STREAM_SUBJECTS = (ALL_EVENTS, ALL_CONTROL, ALL_ASR_CONTROL, ALL_TRANSCRIPT, ALL_REPLY)


# Queue groups: one member of each group handles each message.
QUEUE_ASR = "asr"
QUEUE_AGENT = "agent"
QUEUE_TTS = "tts"


def kind_of(subject: str) -> str:
    """What a per-call subject carries (``audio.in``, ``transcript``, ...), never naming the
    call or the worker (metric labels, tail); "other" for anything else."""
    parts = subject.split(".", 2)
    if len(parts) < 3 or parts[0] != PREFIX or parts[1] == "_sys":
        return "other"
    kind = parts[2]
    return "audio.in" if kind.startswith("audio.in.") else kind


def call_sid_of(subject: str) -> str:
    """The call SID of a per-call subject (``voice.<call>.x``)."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != PREFIX or parts[1] == "_sys":
        raise ValueError("not a per-call subject")
    return parts[1]
