"""``voiceagent tail``: the bus traffic of one call (or all), one readable line per message.

Text (transcripts, replies, heard text) passes :func:`shared.redact.redact` unless
``--show-text``; call SIDs are shown as their log tag (``call-1a2b3c4d``) unless ``--show-text``.
``--stage asr,agent`` keeps the lines of those services or subject kinds; colours (one per
service) only on a terminal unless ``--color``. ``voiceagent replay`` renders stored messages with
the same functions.

Showing text is an access to PHI: ``--show-text`` first writes an audit record (``call.tail``,
``call.replay``: :func:`audit_text_access`); no record stored, no text. Tail connects with the
services' NATS settings (``NATS_USER``=operator, ...), so NATS permissions apply to it too.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared import headers as H
from shared import subjects
from shared.audio import duration_ms
from shared.messages import (
    AsrClaim,
    AsrClaimReply,
    AsrHeartbeat,
    CallEnded,
    CallStarted,
    Dtmf,
    Event,
    Hangup,
    Interrupt,
    Played,
    ReplySegment,
    SpeechStarted,
    SpeechStopped,
    StageFailed,
    Transcript,
    Transfer,
    parse_control,
    parse_event,
    parse_reply,
    parse_transcript,
)
from shared.redact import redact, redact_value, sid_tag
from shared.settings import nats_servers

_SYS_PREFIX = subjects.SYS + "."
_CALL_PREFIX = subjects.PREFIX + "."


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def _split(subject: str) -> tuple[str, str]:
    """(call sid or "", subject suffix) of a ``voice.*`` subject."""
    if subject.startswith(_SYS_PREFIX):
        rest = subject[len(_SYS_PREFIX) :]
        hb = "asr.heartbeat."
        if rest.startswith(hb):
            return rest[len(hb) :], "_sys.asr.heartbeat"
        return "", "_sys." + rest
    if subject.startswith(_CALL_PREFIX):
        parts = subject.split(".", 2)
        if len(parts) == 3:
            return parts[1], subjects.kind_of(subject)
    return "", subject


def _text(text: str, show_text: bool) -> str:
    return repr(text if show_text else redact(text))


def _audio(
    suffix: str, headers: Mapping[str, str], data: bytes
) -> tuple[float | None, str, str, str, str]:
    sent = headers.get(H.SENT_NS, "")
    at = int(sent) / 1e9 if sent.isdigit() else None
    size = f"{len(data)} B {duration_ms(data):.0f} ms"
    if suffix == "audio.in":
        return at, headers.get(H.SERVICE, "gateway"), f"#{headers.get(H.SEQ, '?')}", "audio", size
    pos = f"t{headers.get(H.TURN, '?')}/{headers.get(H.SEG, '?')}.{headers.get(H.CHUNK, '?')}"
    kind = "audio last" if headers.get(H.LAST) == "1" else "audio"
    return at, headers.get(H.SERVICE, "tts"), pos, kind, size


def _describe(msg: Any, show_text: bool) -> tuple[str, str, str]:
    """(service, turn/seq, detail) of a parsed JSON message."""
    if isinstance(msg, Transcript):
        kind = "final" if msg.is_final else "interim"
        return "asr", f"u{msg.utterance_id}", f"{kind} {_text(msg.text, show_text)}"
    if isinstance(msg, SpeechStarted):
        return "asr", f"u{msg.utterance_id}", f"at {msg.audio_ms} ms"
    if isinstance(msg, SpeechStopped):
        return "asr", f"u{msg.utterance_id}", f"at {msg.audio_ms} ms, {msg.speech_ms} ms speech"
    if isinstance(msg, ReplySegment):
        last = " (last)" if msg.last else ""
        return "agent", f"t{msg.turn}/{msg.seq}", f"{_text(msg.text, show_text)}{last}"
    if isinstance(msg, Played):
        done = "complete" if msg.complete else "cut"
        return "gateway", f"t{msg.turn}/{msg.seq}", f"{done} {_text(msg.heard_text, show_text)}"
    if isinstance(msg, Interrupt):
        return "gateway", f"t{msg.turn}", ""
    if isinstance(msg, CallStarted):
        return "gateway", "", f"gateway={msg.gateway_id}"
    if isinstance(msg, CallEnded):
        return "gateway", "", f"reason={msg.reason}"
    if isinstance(msg, Dtmf):
        return "gateway", "", f"digit={msg.digit if show_text else '*'}"
    if isinstance(msg, Hangup):
        return "agent", f"t{msg.after_turn}" if msg.after_turn is not None else "", msg.reason
    if isinstance(msg, Transfer):
        to = msg.to if show_text else redact(msg.to)
        return "agent", f"t{msg.after_turn}" if msg.after_turn is not None else "", f"to={to}"
    if isinstance(msg, StageFailed):
        return msg.service, "", msg.reason
    if isinstance(msg, Event):
        data = " ".join(
            f"{k}={redact_value(k, v, allow_text=show_text)}" for k, v in msg.data.items()
        )
        turn = f"t{msg.turn}" if msg.turn is not None else ""
        return msg.service, turn, f"{msg.name} {data}".rstrip()
    if isinstance(msg, AsrClaim):
        return "gateway", "", f"gateway={msg.gateway_id} attempt={msg.attempt}"
    if isinstance(msg, AsrClaimReply):
        return "asr", "", f"{'accepted' if msg.accepted else 'refused'} by {msg.worker_id}"
    if isinstance(msg, AsrHeartbeat):
        return "asr", "", f"worker={msg.worker_id}"
    return "", "", ""  # pragma: no cover - every model is listed above


_PARSERS: dict[str, Callable[[bytes], Any]] = {
    "transcript": parse_transcript,
    "reply": parse_reply,
    "control": parse_control,
    "control.asr": parse_control,
    "events": parse_event,
    "_sys.asr.claim": AsrClaim.model_validate_json,
    "_sys.asr.heartbeat": AsrHeartbeat.model_validate_json,
}


@dataclass(frozen=True, slots=True)
class TailLine:
    """The columns of one message, before rendering (filters look at these)."""

    at: float | None
    call_sid: str
    suffix: str
    service: str
    pos: str
    kind: str
    detail: str

    @property
    def is_audio(self) -> bool:
        """Audio frames and heartbeats (what ``--no-audio`` hides)."""
        return self.suffix.startswith("audio.") or self.suffix == "_sys.asr.heartbeat"

    def matches(self, stages: frozenset[str]) -> bool:
        """Whether the line belongs to one of ``stages`` (a service or a subject kind)."""
        if not stages:
            return True
        kind = self.suffix.removeprefix("_sys.").split(".", 1)[0]
        return self.service in stages or kind in stages or self.suffix in stages


STAGES = ("gateway", "asr", "agent", "tts", "audio", "transcript", "reply", "control", "events")


def parse_stages(value: str | None) -> frozenset[str]:
    """``--stage asr,agent``: the set of stage names (raises ValueError on an unknown one)."""
    if not value:
        return frozenset()
    names = frozenset(v.strip().lower() for v in value.split(",") if v.strip())
    unknown = names - set(STAGES)
    if unknown:
        raise ValueError(
            f"unknown stage {', '.join(sorted(unknown))} (choose from {', '.join(STAGES)})"
        )
    return names


def describe(
    subject: str, headers: Mapping[str, str] | None, data: bytes, *, show_text: bool = False
) -> TailLine:
    """Parse one bus message into :class:`TailLine` columns. Never raises."""
    hdrs = headers or {}
    sid, suffix = _split(subject)
    at: float | None = None
    service = pos = kind = detail = ""
    if suffix in ("audio.in", "audio.out"):
        at, service, pos, kind, detail = _audio(suffix, hdrs, data)
    else:
        parser = _PARSERS.get(suffix)
        msg: Any = None
        if parser is not None:
            try:
                msg = parser(data)
            except (ValidationError, ValueError):
                msg = None
            if msg is None and suffix == "_sys.asr.claim":
                try:  # replies travel on _INBOX subjects; a claim subject carries requests only
                    msg = AsrClaimReply.model_validate_json(data)
                except (ValidationError, ValueError):
                    msg = None
        if msg is None:
            kind, detail = "malformed" if parser else "?", f"{len(data)} B"
        else:
            at = msg.at
            kind = msg.type
            service, pos, detail = _describe(msg, show_text)
    return TailLine(at, sid, suffix, service, pos, kind, detail)


# ANSI SGR colours: one per service, so a turn's path through the stages reads at a glance.
_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_SERVICE_COLOR = {
    "gateway": "\x1b[34m",
    "asr": "\x1b[36m",
    "agent": "\x1b[32m",
    "tts": "\x1b[35m",
}
_KIND_COLOR = {"malformed": "\x1b[31m", "stage_failed": "\x1b[31m", "interrupt": "\x1b[33m"}


def _paint(text: str, code: str | None, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and code else text


def render(
    line: TailLine,
    *,
    show_text: bool = False,
    with_call: bool = False,
    color: bool = False,
    received_at: float | None = None,
) -> str:
    """One line of text (ANSI colours when ``color``)."""
    when = _clock(line.at if line.at is not None else (received_at or time.time()))
    cols = [_paint(when, _DIM, color)]
    if with_call:
        sid = line.call_sid
        cols.append((sid if show_text else sid_tag(sid)) if sid else "-")
    svc_color = _SERVICE_COLOR.get(line.service)
    kind_color = _KIND_COLOR.get(line.kind) or (
        "\x1b[31m"
        if line.kind == "event" and ("error" in line.detail or "failed" in line.detail)
        else None
    )
    cols += [
        f"{line.suffix:<18}",
        _paint(f"{line.service:<8}", svc_color, color),
        f"{line.pos:<8}",
        _paint(f"{line.kind:<15}", kind_color or (_DIM if line.is_audio else None), color),
        line.detail,
    ]
    return " ".join(cols).rstrip()


def format_message(
    subject: str,
    headers: Mapping[str, str] | None,
    data: bytes,
    *,
    show_text: bool = False,
    with_call: bool = False,
    received_at: float | None = None,
    color: bool = False,
) -> str:
    """One readable line: time, [call,] subject suffix, service, turn/seq, type, detail.

    ``headers`` are the NATS headers (audio metadata); ``data`` the raw body. Never raises:
    an unreadable body shows as ``malformed``.
    """
    line = describe(subject, headers, data, show_text=show_text)
    return render(
        line, show_text=show_text, with_call=with_call, color=color, received_at=received_at
    )


@dataclass(frozen=True, slots=True)
class TailOptions:
    """What ``tail`` and ``replay`` print."""

    show_text: bool = False
    audio: bool = True
    stages: frozenset[str] = frozenset()
    color: bool = False
    with_call: bool = False


def format_if_shown(
    subject: str,
    headers: Mapping[str, str] | None,
    data: bytes,
    opts: TailOptions,
    *,
    received_at: float | None = None,
) -> str | None:
    """The rendered line, or None when ``opts`` filter the message out."""
    line = describe(subject, headers, data, show_text=opts.show_text)
    if (not opts.audio and line.is_audio) or not line.matches(opts.stages):
        return None
    return render(
        line,
        show_text=opts.show_text,
        with_call=opts.with_call,
        color=opts.color,
        received_at=received_at,
    )


def use_color(flag: bool | None, stream: Any = None) -> bool:
    """``--color``/``--no-color`` if given, else colour only on a terminal (and no NO_COLOR)."""
    if flag is not None:
        return flag
    if os.environ.get("NO_COLOR"):
        return False
    s = stream if stream is not None else sys.stdout
    isatty = getattr(s, "isatty", None)
    return bool(isatty and isatty())


def actor() -> str:
    """Who reads (the OS user name, as one audit-safe token)."""
    import getpass

    try:
        name = getpass.getuser()
    except Exception:
        name = "unknown"
    return "".join(c for c in name if c.isalnum() or c in "_.@-")[:64] or "unknown"


async def audit_text_access(
    nc: Any, *, action: str, call_sid: str | None, out: Callable[[str], None]
) -> bool:
    """Write the audit record of showing call text; False (show nothing) if not stored."""
    from shared.audit import AuditLog
    from shared.settings import Settings

    try:
        log = AuditLog(nc=nc, service="cli", max_age_days=Settings().audit_max_age_days)
        await log.record(actor=actor(), action=action, call_sid=call_sid)
    except Exception as e:
        out(f"cannot write the audit record ({type(e).__name__}): text not shown")
        return False
    return True


async def run_tail(
    *,
    nats_url: str,
    call_sid: str | None,
    show_text: bool = False,
    audio: bool = True,
    stages: frozenset[str] = frozenset(),
    color: bool = False,
    out: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
    connect: Callable[..., Awaitable[Any]] | None = None,
) -> bool:
    """Subscribe and print until ``stop`` is set (or forever); False: refused (with
    ``show_text``, the audit record could not be stored)."""
    import nats

    from shared import bus
    from shared.settings import Settings

    async def on_error(e: Exception) -> None:
        out(f"(nats: {type(e).__name__}; reconnecting)")

    opts = TailOptions(
        show_text=show_text, audio=audio, stages=stages, color=color, with_call=call_sid is None
    )
    # Credentials, inbox prefix and TLS from the same settings as the services'.
    conn = bus.connect_options(Settings(nats_url=nats_url), name="voiceagent-tail")
    conn.update(max_reconnect_attempts=-1, error_cb=on_error)
    nc = await (connect or nats.connect)(nats_servers(nats_url), **conn)
    if show_text and not await audit_text_access(
        nc, action="call.tail", call_sid=call_sid, out=out
    ):
        await nc.close()
        return False

    async def on_msg(msg: Any) -> None:
        line = format_if_shown(msg.subject, msg.headers, msg.data, opts, received_at=time.time())
        if line is not None:
            out(line)

    if call_sid is None:
        await nc.subscribe(subjects.ALL_CALLS, cb=on_msg)
    else:
        await nc.subscribe(subjects.call_all(call_sid), cb=on_msg)
        await nc.subscribe(subjects.asr_heartbeat(call_sid), cb=on_msg)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await nc.drain()
    return True
