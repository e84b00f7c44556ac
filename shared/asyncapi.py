"""The bus contract as AsyncAPI documents, generated from FastStream apps (one per service).

Each service module exposes ``asyncapi_app`` (e.g. ``services.agent.worker:asyncapi_app``), a
FastStream app over an unconnected broker whose subscribers and publishers declare the subjects
the service receives and sends, with the pydantic models of :mod:`shared.messages` as payloads.
``faststream docs gen services.agent.worker:asyncapi_app --yaml`` prints it;
``voiceagent asyncapi`` (``make asyncapi``) writes ``docs/asyncapi/<service>.yaml`` and a test
checks the committed files still match the code.

The running workers subscribe with raw-bytes decoders (they validate and count bad input
themselves) and publish audio with plain nats-py, so their own brokers would document every
payload as bytes: the contract apps declare the same subjects from :mod:`shared.subjects` with
the real payload types instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI

from shared import messages as m
from shared import subjects

CONTRACT_URL = "nats://nats:4222"  # fixed: the generated files must not depend on NATS_URL
VERSION = f"{m.SCHEMA_VERSION}"
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs" / "asyncapi"
SERVICES = ("gateway", "asr", "agent", "tts")

_AUDIO_IN = (
    "Caller audio: raw 8 kHz mu-law, one 20 ms Twilio frame (160 B) per message, on "
    "voice.<call>.audio.in.<worker>: addressed to the ASR worker holding the call (it "
    "subscribes to voice.*.audio.in.<worker>). Headers (no Va-Schema: audio.in/1 is "
    "implied): Va-Seq (Twilio chunk), Va-Ts (Twilio ms), Va-Sent (ns), traceparent."
)
_AUDIO_OUT = (
    "Reply audio: raw 8 kHz mu-law chunks of one segment. Headers: Va-Turn, Va-Seg, Va-Chunk, "
    "Va-Last ('1' on the last chunk, whose body may be empty), traceparent."
)


_SID = "CALLSID"


def _wild(subject_of: Callable[[str], str]) -> str:
    """A per-call subject with ``*`` for the call SID (how one worker subscribes to all)."""
    return subject_of(_SID).replace(_SID, "*")


@dataclass(frozen=True, slots=True)
class Channel:
    """One subject family of the contract."""

    subject: str
    payload: Any
    description: str
    queue: str = ""


CHANNELS: dict[str, Channel] = {
    "audio.in": Channel(subjects.ALL_AUDIO_IN, bytes, _AUDIO_IN),
    "transcript": Channel(
        _wild(subjects.transcript),
        m.TranscriptMsg,
        "ASR -> agent (queue group agent) and gateway: speech start/stop, interim and final "
        "transcripts (PHI).",
        subjects.QUEUE_AGENT,
    ),
    "reply": Channel(
        _wild(subjects.reply),
        m.ReplyMsg,
        "Agent -> TTS (queue group tts) and gateway: one sentence of a turn's reply (PHI).",
        subjects.QUEUE_TTS,
    ),
    "audio.out": Channel(_wild(subjects.audio_out), bytes, _AUDIO_OUT),
    "control": Channel(
        _wild(subjects.control),
        m.ControlMsg,
        "Gateway and agent -> everyone on the call: start, end, interrupt, played, hangup, "
        "transfer, dtmf, prompt, stage failed.",
    ),
    "control.asr": Channel(
        _wild(subjects.asr_control),
        m.StageFailed,
        "ASR -> agent (queue group agent): the recognizer failed (the agent apologizes).",
        subjects.QUEUE_AGENT,
    ),
    "events": Channel(
        _wild(subjects.events),
        m.EventMsg,
        "Every service: lifecycle and per-stage timings (never PHI).",
    ),
    "asr.claim": Channel(
        subjects.ASR_CLAIM,
        m.AsrClaim,
        "Gateway -> ASR queue group (request; the reply is an AsrClaimReply).",
        subjects.QUEUE_ASR,
    ),
    "asr.heartbeat": Channel(
        _wild(subjects.asr_heartbeat),
        m.AsrHeartbeat,
        "ASR worker -> gateway every 0.5 s while it holds the call.",
    ),
    "turn.heartbeat": Channel(
        _wild(subjects.turn_heartbeat),
        m.TurnHeartbeat,
        "Agent replica -> gateway every 0.5 s while it answers an utterance (docs/failover.md).",
    ),
    "retry.turn": Channel(
        _wild(subjects.retry_turn),
        m.Transcript,
        "Gateway -> agent (queue group agent): a final transcript re-sent, its turn having made "
        "no progress (docs/failover.md; PHI).",
        subjects.QUEUE_AGENT,
    ),
    "retry.segment": Channel(
        _wild(subjects.retry_segment),
        m.ReplySegment,
        "Gateway -> TTS (queue group tts): a reply segment re-sent, its audio having stalled "
        "(docs/failover.md; PHI).",
        subjects.QUEUE_TTS,
    ),
}


def _handler(name: str, payload: Any) -> Any:
    async def handler(msg: Any) -> None:  # documentation only: never runs
        return None

    handler.__name__ = handler.__qualname__ = name.replace(".", "_")
    handler.__annotations__ = {"msg": payload, "return": None}
    param = inspect.Parameter("msg", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=payload)
    handler.__signature__ = inspect.Signature([param], return_annotation=None)  # type: ignore[attr-defined]
    return handler


def contract_app(service: str, *, receives: Sequence[str], sends: Sequence[str]) -> FastStream:
    """A FastStream app (never started) documenting what ``service`` receives and sends."""
    broker = NatsBroker(CONTRACT_URL, logger=None)
    for name in receives:
        ch = CHANNELS[name]
        sub = broker.subscriber(
            ch.subject,
            queue=ch.queue if ch.queue == service else "",  # queue groups are named by service
            title=f"{name}:receive",
            description=ch.description,
        )
        sub(_handler(f"on_{name}", ch.payload))
    for name in sends:
        ch = CHANNELS[name]
        broker.publisher(
            ch.subject,
            schema=ch.payload,
            title=f"{name}:send",
            description=ch.description,
        )
    spec = AsyncAPI(
        broker,
        title=f"voiceagent {service}",
        version=VERSION,
        description=f"What the {service} service receives and sends on NATS. "
        "Per-call subjects are voice.<call_sid>.*; see docs/subjects.md.",
    )
    return FastStream(broker, specification=spec, logger=None)


def to_yaml(app: FastStream) -> str:
    """The app's AsyncAPI document as YAML, keys sorted.

    Same content as ``faststream docs gen --yaml``, whose publisher order follows Python's
    per-process string hashing: sorting makes the committed files reproducible.
    """
    import yaml  # type: ignore[import-untyped]

    schema: Any = app.schema
    doc = schema.to_specification().to_jsonable()
    text: str = yaml.safe_dump(doc, sort_keys=True, allow_unicode=True, width=100)
    return text


def service_app(service: str) -> FastStream:
    """The ``asyncapi_app`` of one service (imports its module)."""
    import importlib

    module = "services.gateway.app" if service == "gateway" else f"services.{service}.worker"
    app: FastStream = importlib.import_module(module).asyncapi_app
    return app


def generate(out_dir: Path = DOCS_DIR) -> dict[Path, str]:
    """The contract files: path -> YAML text, one per service."""
    return {out_dir / f"{s}.yaml": to_yaml(service_app(s)) for s in SERVICES}


def write(out_dir: Path = DOCS_DIR) -> list[Path]:
    """Regenerate the committed files; returns the ones that changed."""
    changed: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in generate(out_dir).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed
