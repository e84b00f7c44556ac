"""A simulated phone call that speaks Twilio's side of the protocol, faithfully.

It does what Twilio does for an inbound call to a number whose voice webhook is the gateway:

1. ``POST /voice`` with Twilio's form parameters, signed (``X-Twilio-Signature``) over
   ``PUBLIC_URL + "/voice"``;
2. reads the TwiML answer: ``<Connect><Stream url=...>`` and its ``<Parameter>``s;
3. opens the WebSocket to that URL (mapped to the local gateway), signing the upgrade over the
   ``ws(s)://`` URL, and sends ``connected``, ``start`` (parameters in ``customParameters``),
   then caller audio as ``media`` every 20 ms on a real-time clock, silence between
   utterances, ``dtmf`` on request and ``stop`` at the end;
4. plays what the gateway sends like Twilio's playback buffer: consumed in real time, a
   ``mark`` echoed once the audio queued before it has played, ``clear`` drops the buffer and
   echoes the pending marks. Every outbound message is validated strictly (only ``media``,
   ``mark`` and ``clear``, right ``streamSid``, valid base64); anything else is recorded as a
   protocol error, with Twilio's error code.

When NATS is reachable it also listens to the call's transcript and reply subjects, to show
what the recognizer heard and what the agent said. :func:`place_call` returns a
:class:`CallResult` that the CLI prints and the tests assert on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import websockets
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection

from shared import subjects
from shared.audio import (
    FRAME_BYTES,
    FRAME_MS,
    MULAW_SILENCE,
    SAMPLE_RATE,
    frames,
    ulaw_to_float,
    ulaw_to_pcm16,
)
from shared.messages import (
    Hangup,
    ReplySegment,
    Transcript,
    Transfer,
    parse_control,
    parse_reply,
    parse_transcript,
)
from shared.settings import nats_servers

SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES
FRAME_S = FRAME_MS / 1000
# After the agent's hangup control, how long the caller waits for the gateway to drop the line:
# past the gateway's own HANGUP_IDLE_S (2 s after its last audio when a mark never came back),
# with room for a loaded machine.
HANGUP_WAIT_S = 5.0
# Reply audio that stopped arriving this long before the caller finished talking was given up
# for them (the gateway holds or clears a reply the caller talks over).
GAVE_WAY_S = 0.3
_SPEECH_RMS = 0.01  # frames below this (about -40 dBFS) count as silence for end-of-speech
_MARK_TURN_SEQ = re.compile(r"^(\d+):(\d+)$")

Line = Callable[[str], None]


# ---------------------------------------------------------------- Twilio's playback buffer


class PlaybackBuffer:
    """Twilio's outbound buffer for one stream: audio and marks in arrival order.

    :meth:`play` consumes audio at whatever pace the caller drives it (the simulator: 160
    bytes every 20 ms). A mark is due once all audio queued before it has played; a mark
    received while nothing is queued is due at once. :meth:`clear` drops the audio and returns
    the marks still pending, which Twilio echoes.
    """

    def __init__(self) -> None:
        self._items: deque[bytearray | str] = deque()
        self._bytes = 0

    def add_audio(self, mulaw: bytes) -> None:
        """Queue audio behind whatever is already buffered."""
        if not mulaw:
            return
        if self._items and isinstance(self._items[-1], bytearray):
            self._items[-1].extend(mulaw)
        else:
            self._items.append(bytearray(mulaw))
        self._bytes += len(mulaw)

    def add_mark(self, name: str) -> list[str]:
        """Queue a mark; returns ``[name]`` when it is due at once (nothing before it)."""
        if not self._items:
            return [name]
        self._items.append(name)
        return []

    def play(self, nbytes: int) -> tuple[bytes, list[str]]:
        """Play up to ``nbytes``: returns the audio played and the marks now due, in order."""
        out = bytearray()
        due: list[str] = []
        while self._items:
            head = self._items[0]
            if isinstance(head, str):
                due.append(head)
                self._items.popleft()
                continue
            if len(out) >= nbytes:
                break
            take = min(nbytes - len(out), len(head))
            out += head[:take]
            del head[:take]
            self._bytes -= take
            if not head:
                self._items.popleft()
        return bytes(out), due

    def clear(self) -> list[str]:
        """Drop all buffered audio; returns the pending marks (Twilio echoes them)."""
        marks = [i for i in self._items if isinstance(i, str)]
        self._items.clear()
        self._bytes = 0
        return marks

    @property
    def buffered_bytes(self) -> int:
        """Audio not yet played."""
        return self._bytes

    @property
    def pending_marks(self) -> list[str]:
        """Marks not yet due."""
        return [i for i in self._items if isinstance(i, str)]

    @property
    def idle(self) -> bool:
        """Nothing left to play and no mark pending."""
        return not self._items


# ---------------------------------------------------------------- what the gateway may send


class ProtocolError(ValueError):
    """A message Twilio would refuse; ``code`` is Twilio's error/warning number."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(f"{message} (Twilio {code})")
        self.code = code


@dataclass(frozen=True)
class OutMedia:
    """``media`` from the gateway: mu-law to play."""

    audio: bytes


@dataclass(frozen=True)
class OutMark:
    """``mark`` from the gateway."""

    name: str


@dataclass(frozen=True)
class OutClear:
    """``clear`` from the gateway."""


Outbound = OutMedia | OutMark | OutClear

_ALLOWED_KEYS = {
    "media": {"event", "streamSid", "media"},
    "mark": {"event", "streamSid", "mark"},
    "clear": {"event", "streamSid"},
}


def parse_outbound(raw: str | bytes, *, stream_sid: str) -> Outbound:
    """Validate one gateway -> Twilio frame as strictly as Twilio; raises :class:`ProtocolError`.

    Twilio accepts only ``media``, ``mark`` and ``clear`` JSON text frames (31924), warns on
    binary frames (31950) and refuses a wrong ``streamSid`` (31951).
    """
    if isinstance(raw, bytes):
        raise ProtocolError("binary frame", code=31950)
    try:
        msg = json.loads(raw)
    except ValueError as e:
        raise ProtocolError("not JSON", code=31924) from e
    if not isinstance(msg, dict):
        raise ProtocolError("not a JSON object", code=31924)
    kind = msg.get("event")
    if kind not in _ALLOWED_KEYS:
        raise ProtocolError(f"unknown event {str(kind)[:32]!r}", code=31924)
    extra = set(msg) - _ALLOWED_KEYS[kind]
    if extra:
        raise ProtocolError(f"{kind}: unexpected keys {sorted(extra)}", code=31924)
    if msg.get("streamSid") != stream_sid:
        raise ProtocolError(f"{kind}: wrong or missing streamSid", code=31951)
    if kind == "clear":
        return OutClear()
    body = msg.get(kind)
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind}: missing '{kind}' object", code=31924)
    if kind == "mark":
        name = body.get("name")
        if set(body) != {"name"} or not isinstance(name, str) or not name:
            raise ProtocolError("mark: needs exactly a non-empty string 'name'", code=31924)
        return OutMark(name)
    payload = body.get("payload")
    if set(body) != {"payload"} or not isinstance(payload, str):
        raise ProtocolError("media: needs exactly a string 'payload'", code=31924)
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("media: payload is not valid base64", code=31924) from e
    if not audio:
        raise ProtocolError("media: empty payload", code=31924)
    return OutMedia(audio)


# ---------------------------------------------------------------- webhook and TwiML


def twilio_signature(url: str, params: dict[str, str], token: str) -> str:
    """``X-Twilio-Signature`` for ``url`` and POST ``params`` (empty for the WS upgrade)."""
    from twilio.request_validator import RequestValidator

    return str(RequestValidator(token).compute_signature(url, params))


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + uuid.uuid4().hex


@dataclass(frozen=True)
class StreamTarget:
    """What the TwiML asked for: the stream URL and its ``<Parameter>``s."""

    url: str
    parameters: dict[str, str]


class CallRejected(RuntimeError):
    """The webhook did not answer with ``<Connect><Stream>`` (or failed)."""


def parse_twiml(xml: str) -> StreamTarget:
    """Find ``<Response><Connect><Stream url>`` and its parameters; raise :class:`CallRejected`."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise CallRejected(f"TwiML is not XML: {e}") from e
    if root.tag != "Response":
        raise CallRejected(f"TwiML root is <{root.tag}>, not <Response>")
    stream = root.find("./Connect/Stream")
    if stream is None:
        verbs = ", ".join(f"<{c.tag}>" for c in root) or "nothing"
        raise CallRejected(f"TwiML has no <Connect><Stream> ({verbs})")
    url = stream.get("url", "")
    if not url:
        raise CallRejected("<Stream> has no url")
    params: dict[str, str] = {}
    for p in stream.findall("Parameter"):
        name = p.get("name")
        if name:
            params[name] = p.get("value", "")
    return StreamTarget(url=url, parameters=params)


def local_stream_url(stream_url: str, gateway_url: str) -> str:
    """Where to connect for ``stream_url``: same path, on the local gateway's host and port."""
    g = urlsplit(gateway_url)
    s = urlsplit(stream_url)
    scheme = "wss" if g.scheme == "https" else "ws"
    return urlunsplit((scheme, g.netloc, s.path, s.query, ""))


# ---------------------------------------------------------------- the caller's script


@dataclass(frozen=True)
class CallerTurn:
    """One thing the caller does: say a sentence, play a WAV, or press keys."""

    kind: Literal["say", "wav", "dtmf"]
    value: str
    audio: bytes = b""  # 8 kHz mu-law for say/wav (filled by :func:`prepare_turns`)

    @property
    def label(self) -> str:
        """How the conversation printout shows it."""
        return {"say": self.value, "wav": f"[{self.value}]", "dtmf": f"[keys {self.value}]"}[
            self.kind
        ]


def say(text: str) -> CallerTurn:
    """A spoken sentence (synthesized by :func:`prepare_turns`)."""
    return CallerTurn(kind="say", value=text)


def wav(path: str | Path) -> CallerTurn:
    """A WAV file the caller plays into the phone."""
    return CallerTurn(kind="wav", value=str(path))


def dtmf(digits: str) -> CallerTurn:
    """Key presses."""
    return CallerTurn(kind="dtmf", value=digits)


async def prepare_turns(turns: Sequence[CallerTurn]) -> list[CallerTurn]:
    """Synthesize / load the audio of every turn before the call (off the event loop)."""
    from devkit import voices

    out: list[CallerTurn] = []
    for t in turns:
        if t.kind == "say" and not t.audio:
            audio = await asyncio.to_thread(voices.synthesize, t.value)
            t = CallerTurn(kind=t.kind, value=t.value, audio=audio)
        elif t.kind == "wav" and not t.audio:
            audio = await asyncio.to_thread(voices.load_wav, Path(t.value))
            t = CallerTurn(kind=t.kind, value=t.value, audio=audio)
        out.append(t)
    return out


def last_speech_frame(mulaw: bytes) -> int:
    """Index of the last 20 ms frame with speech energy (-1 if all silent)."""
    fr = frames(mulaw)
    for i in range(len(fr) - 1, -1, -1):
        x = ulaw_to_float(fr[i])
        if x.size and float(np.sqrt(np.mean(x * x))) >= _SPEECH_RMS:
            return i
    return -1


# ---------------------------------------------------------------- results


@dataclass
class TurnResult:
    """One exchange: what the caller did and what came back."""

    caller: str  # the sentence, "[file.wav]", "[keys 1]", or "" for the greeting
    kind: str  # "greeting", "say", "wav", "dtmf"
    speech_end_at: float | None = None  # monotonic: end of caller speech (latency origin)
    first_audio_at: float | None = None  # monotonic: first reply media received
    last_audio_at: float | None = None
    reply_audio: bytearray = field(default_factory=bytearray)
    recognized: list[str] = field(default_factory=list)  # final transcripts (bus)
    segments: list[ReplySegment] = field(default_factory=list)  # agent reply text (bus)
    marks: list[str] = field(default_factory=list)  # marks echoed during this exchange
    finished: bool = False  # the reply ended (not timed out, not cut by the end of the call)
    talked_over_ms: float = 0.0  # reply audio that started, then stopped, while the caller spoke

    @property
    def latency_ms(self) -> float | None:
        """End of caller speech to first reply audio received."""
        if self.speech_end_at is None or self.first_audio_at is None:
            return None
        return (self.first_audio_at - self.speech_end_at) * 1000.0

    @property
    def reply_ms(self) -> float:
        """Playing time of the reply audio received."""
        return len(self.reply_audio) * 1000.0 / SAMPLE_RATE

    @property
    def agent_text(self) -> str:
        """The agent's reply text, segments in (turn, seq) order; a segment sent again (a
        taken-over turn) counts once, as the gateway plays it once."""
        segs = {(s.turn, s.seq): s for s in reversed(self.segments)}
        return " ".join(t for _, s in sorted(segs.items()) if (t := s.text.strip()))

    @property
    def recognized_text(self) -> str:
        """What the recognizer made of the caller's words."""
        return " ".join(t.strip() for t in self.recognized if t.strip())


def word_recall(said: str, heard: str) -> float:
    """Share of the words of ``said`` found in ``heard`` (case and punctuation ignored)."""
    norm = re.compile(r"[^a-z0-9' ]+")
    want = norm.sub(" ", said.lower()).split()
    got = set(norm.sub(" ", heard.lower()).split())
    if not want:
        return 1.0
    return sum(1 for w in want if w in got) / len(want)


@dataclass
class CallResult:
    """Everything the simulated call observed (what the CLI prints and tests assert on)."""

    call_sid: str
    account_sid: str
    stream_sid: str = ""
    twiml: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    greeting: TurnResult = field(default_factory=lambda: TurnResult(caller="", kind="greeting"))
    turns: list[TurnResult] = field(default_factory=list)
    heard: bytearray = field(default_factory=bytearray)  # what the caller heard, real time
    marks_received: list[str] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    clears: int = 0
    media_received: int = 0
    protocol_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bus: bool = False  # transcripts and reply text were observed on NATS
    ended_by: Literal["caller", "gateway", "rejected", "error"] = "caller"
    control: list[str] = field(default_factory=list)  # hangup / transfer seen on the bus

    @property
    def exchanges(self) -> list[TurnResult]:
        """Greeting first, then every caller turn."""
        return [self.greeting, *self.turns]

    @property
    def latencies_ms(self) -> list[float]:
        """Per caller turn, end of speech to first reply audio (turns with a reply)."""
        return [t.latency_ms for t in self.turns if t.latency_ms is not None]

    def heard_pcm16(self) -> bytes:
        """What the caller heard, as 8 kHz 16-bit PCM."""
        return ulaw_to_pcm16(bytes(self.heard))

    def save_heard(self, path: Path) -> None:
        """Write what the caller heard as an 8 kHz 16-bit mono WAV."""
        from devkit.voices import write_wav

        write_wav(path, self.heard_pcm16())


# ---------------------------------------------------------------- the call


async def _quiet(e: Exception) -> None:
    """nats-py error callback: the simulator reports bus trouble itself, without tracebacks."""


@dataclass
class _Speech:
    frames: deque[bytes]
    end_index: int  # frames sent before end of speech is reached
    done: asyncio.Future[float]
    sent: int = 0


class SimulatedCall:
    """One call from Twilio's side. Use :func:`place_call` unless you need the parts."""

    def __init__(
        self,
        *,
        gateway_url: str,
        public_url: str,
        auth_token: str,
        account_sid: str = "",
        call_sid: str = "",
        from_number: str = "+15555550100",
        to_number: str = "+15555550199",
        nats_url: str | None = None,
        greeting_timeout_s: float = 20.0,
        reply_timeout_s: float = 30.0,
        quiet_s: float = 1.5,
        on_line: Line | None = None,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.auth_token = auth_token
        self.nats_url = nats_url
        self.from_number = from_number
        self.to_number = to_number
        self.greeting_timeout_s = greeting_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.quiet_s = quiet_s
        self._say = on_line or (lambda _line: None)
        self.result = CallResult(
            call_sid=call_sid or new_sid("CA"), account_sid=account_sid or new_sid("AC")
        )
        self._playback = PlaybackBuffer()
        self._phase = self.result.greeting
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._seq = 0
        self._chunk = 0
        self._speech: _Speech | None = None
        self._ended = asyncio.Event()
        self._stopped = False
        self._last_media_at = 0.0
        self._last_segments: dict[int, int] = {}  # turn -> seq of its last segment (bus)
        self._nc: Any = None

    # ---------------------------------------------------------------- webhook

    def voice_params(self) -> dict[str, str]:
        """The form Twilio posts to the voice webhook for an inbound call."""
        r = self.result
        return {
            "AccountSid": r.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": r.call_sid,
            "CallStatus": "ringing",
            "Called": self.to_number,
            "Caller": self.from_number,
            "Direction": "inbound",
            "From": self.from_number,
            "To": self.to_number,
            "CallerCountry": "US",
            "ToCountry": "US",
        }

    async def post_voice(self) -> StreamTarget:
        """POST the signed webhook, as Twilio does, and parse the TwiML answer."""
        params = self.voice_params()
        signed_url = self.public_url + "/voice"
        headers = {
            "X-Twilio-Signature": twilio_signature(signed_url, params, self.auth_token),
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        }
        async with httpx.AsyncClient(timeout=15.0, trust_env=False) as client:
            resp = await client.post(self.gateway_url + "/voice", data=params, headers=headers)
        if resp.status_code != 200:
            raise CallRejected(f"POST /voice answered {resp.status_code}")
        self.result.twiml = resp.text
        target = parse_twiml(resp.text)
        u = urlsplit(target.url)
        if u.query:
            self.result.protocol_errors.append("stream URL has a query string (Twilio 31920)")
        if u.scheme != "wss" and self.public_url.startswith("https:"):
            self.result.warnings.append(f"stream URL is {u.scheme}://; Twilio accepts only wss://")
        self.result.parameters = dict(target.parameters)
        return target

    # ---------------------------------------------------------------- bus (optional)

    async def _connect_bus(self) -> None:
        if not self.nats_url:
            return
        import nats

        sid = self.result.call_sid
        try:
            servers = nats_servers(self.nats_url)
            u = urlsplit(servers[0])
            # A quick TCP check first: nats-py would retry an absent server for seconds.
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(u.hostname or "127.0.0.1", u.port or 4222), timeout=2
            )
            writer.close()
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers,
                    name="voiceagent-call",
                    connect_timeout=2,
                    max_reconnect_attempts=5,
                    error_cb=_quiet,
                ),
                timeout=4,
            )
        except Exception as e:
            self._say(f"(NATS at {self.nats_url} unreachable: {type(e).__name__}; no text shown)")
            return
        await self._nc.subscribe(subjects.transcript(sid), cb=self._on_transcript)
        await self._nc.subscribe(subjects.reply(sid), cb=self._on_reply)
        await self._nc.subscribe(subjects.control(sid), cb=self._on_control)
        await self._nc.flush()
        self.result.bus = True

    async def _on_transcript(self, msg: Any) -> None:
        try:
            m = parse_transcript(msg.data)
        except ValidationError:
            return
        if isinstance(m, Transcript) and m.is_final and m.text.strip():
            self._phase.recognized.append(m.text)
            self._say(f"    (recognized: {m.text.strip()})")

    async def _on_reply(self, msg: Any) -> None:
        try:
            seg = parse_reply(msg.data)
        except ValidationError:
            return
        self._phase.segments.append(seg)
        if seg.last:
            self._last_segments[seg.turn] = seg.seq

    async def _on_control(self, msg: Any) -> None:
        try:
            m = parse_control(msg.data)
        except ValidationError:
            return
        if isinstance(m, Hangup | Transfer):
            self.result.control.append(m.type)

    # ---------------------------------------------------------------- stream

    async def _send(self, msg: dict[str, Any], *, numbered: bool = True) -> None:
        if self._ws is None:
            return
        async with self._send_lock:
            if self._stopped:  # nothing follows Twilio's `stop`
                return
            self._stopped = msg["event"] == "stop"
            if numbered:
                self._seq += 1
                msg = {"event": msg["event"], "sequenceNumber": str(self._seq), **msg}
            try:
                await self._ws.send(json.dumps(msg))
            except websockets.ConnectionClosed:
                self._end("gateway")

    def _end(self, by: Literal["caller", "gateway", "rejected", "error"]) -> None:
        if not self._ended.is_set():
            self.result.ended_by = by
            self._ended.set()

    async def _echo_marks(self, names: list[str]) -> None:
        for name in names:
            self.result.marks_echoed.append(name)
            self._phase.marks.append(name)
            await self._send(
                {"event": "mark", "streamSid": self.result.stream_sid, "mark": {"name": name}}
            )

    async def _tick(self) -> None:
        """One 20 ms step: send one caller frame, play 20 ms of the buffer."""
        sp = self._speech
        frame = SILENCE_FRAME
        if sp is not None and sp.frames:
            frame = sp.frames.popleft()
            sp.sent += 1
            if sp.sent > sp.end_index and not sp.done.done():
                sp.done.set_result(time.monotonic())
            if not sp.frames:
                self._speech = None
        self._chunk += 1
        await self._send(
            {
                "event": "media",
                "streamSid": self.result.stream_sid,
                "media": {
                    "track": "inbound",
                    "chunk": str(self._chunk),
                    "timestamp": str((self._chunk - 1) * FRAME_MS),
                    "payload": base64.b64encode(frame).decode(),
                },
            }
        )
        played, due = self._playback.play(FRAME_BYTES)
        self.result.heard += played + bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(played))
        if due:
            await self._echo_marks(due)

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        while not self._ended.is_set():
            k += 1
            delay = t0 + k * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:  # the process stalled: resume the clock rather than burst
                t0, k = loop.time(), 0
            await self._tick()

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                await self._handle(raw)
        except websockets.ConnectionClosed:
            pass
        if not self._ended.is_set():
            self._say("(the gateway closed the stream: call over)")
        self._end("gateway")

    async def _handle(self, raw: str | bytes) -> None:
        r = self.result
        try:
            out = parse_outbound(raw, stream_sid=r.stream_sid)
        except ProtocolError as e:
            r.protocol_errors.append(str(e))
            self._say(f"!! protocol error: {e}")
            return
        if isinstance(out, OutMedia):
            now = time.monotonic()
            r.media_received += 1
            self._last_media_at = now
            if self._phase.first_audio_at is None:
                self._phase.first_audio_at = now
            self._phase.last_audio_at = now
            self._phase.reply_audio += out.audio
            self._playback.add_audio(out.audio)
        elif isinstance(out, OutMark):
            r.marks_received.append(out.name)
            await self._echo_marks(self._playback.add_mark(out.name))
        else:
            r.clears += 1
            await self._echo_marks(self._playback.clear())

    def _speak(self, audio: bytes) -> asyncio.Future[float]:
        fr = [f.ljust(FRAME_BYTES, bytes([MULAW_SILENCE])) for f in frames(audio)]
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        end = max(last_speech_frame(audio), 0)
        if not fr:
            done.set_result(time.monotonic())
        else:
            self._speech = _Speech(frames=deque(fr), end_index=end, done=done)
        return done

    async def _press(self, digits: str) -> float:
        """Send the keys a quarter second apart; returns when the last one was sent."""
        sent = time.monotonic()
        for i, d in enumerate(digits):
            if i:
                await asyncio.sleep(0.25)
            sent = time.monotonic()
            await self._send(
                {
                    "event": "dtmf",
                    "streamSid": self.result.stream_sid,
                    "dtmf": {"track": "inbound_track", "digit": d},
                }
            )
        return sent

    def _gave_way(self, turn: TurnResult) -> None:
        """The agent started while the caller was still talking and stopped (held or cleared
        for them): as a person would, the caller waits for the answer to all they said, and
        its latency counts from their end. Audio still playing is listened to."""
        if turn.first_audio_at is None or not self._playback.idle:
            return
        if time.monotonic() - self._last_media_at < GAVE_WAY_S:
            return
        turn.talked_over_ms += turn.reply_ms
        turn.first_audio_at = turn.last_audio_at = None
        turn.reply_audio.clear()

    def _reply_complete(self, turn: TurnResult) -> bool:
        """The bus said which segment is the reply's last, and its mark came back."""
        turns = {s.turn for s in turn.segments}
        if not turns:
            return False
        latest = max(turns)
        seq = self._last_segments.get(latest)
        return seq is not None and f"{latest}:{seq}" in self.result.marks_echoed

    async def _await_reply(self, turn: TurnResult, first_timeout_s: float) -> None:
        """Wait for the reply to start, then for it to finish playing (or time out)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + first_timeout_s
        while turn.first_audio_at is None:
            if self._ended.is_set() or loop.time() > deadline:
                return
            await asyncio.sleep(FRAME_S)
        hard = loop.time() + self.reply_timeout_s
        while loop.time() < hard:
            if self._playback.idle:
                idle = time.monotonic() - self._last_media_at
                # A gateway that hangs up after the reply played ends it too (agent hangup).
                done = self._ended.is_set() or idle >= self.quiet_s
                if done or (idle >= 0.3 and self._reply_complete(turn)):
                    turn.finished = True
                    return
            if self._ended.is_set():
                return
            await asyncio.sleep(FRAME_S)

    async def _describe(self, turn: TurnResult) -> None:
        if turn.first_audio_at is None:
            why = "call ended" if self._ended.is_set() else "timed out"
            self._say(f"agent:  (no reply: {why})")
            return
        text = turn.agent_text if self.result.bus else ""
        shown = text or f"[{turn.reply_ms / 1000:.1f} s of audio]"
        facts = [f"{turn.reply_ms / 1000:.1f} s audio"]
        if turn.latency_ms is not None:
            facts.insert(0, f"latency {turn.latency_ms:.0f} ms")
        if not turn.finished:
            facts.append("cut off")
        self._say(f"agent:  {shown}   ({', '.join(facts)})")

    async def run(self, turns: Sequence[CallerTurn]) -> CallResult:
        """Place the call, play the script, hang up; never raises for the call's own failures."""
        r = self.result
        try:
            await self._connect_bus()
            try:
                target = await self.post_voice()
            except (CallRejected, httpx.HTTPError) as e:
                r.ended_by = "rejected"
                self._say(f"call rejected: {e}")
                return r
            return await self.stream(target, turns)
        finally:
            if self._nc is not None:
                await self._nc.drain()
                self._nc = None

    async def stream(self, target: StreamTarget, turns: Sequence[CallerTurn]) -> CallResult:
        """The media stream part of the call (after the webhook answered with ``target``)."""
        r = self.result
        tasks: list[asyncio.Task[None]] = []
        try:
            ws_url = local_stream_url(target.url, self.gateway_url)
            headers = {"X-Twilio-Signature": twilio_signature(target.url, {}, self.auth_token)}
            try:
                self._ws = await websockets.connect(
                    ws_url,
                    additional_headers=headers,
                    user_agent_header="Twilio.TmeWs/1.0",
                    compression=None,
                    proxy=None,
                    open_timeout=10,
                    max_size=2**20,
                )
            except (OSError, websockets.InvalidHandshake, TimeoutError) as e:
                r.ended_by = "rejected"
                r.protocol_errors.append(f"WebSocket upgrade refused: {e}")
                self._say(f"call rejected: WebSocket upgrade refused ({e})")
                return r
            r.stream_sid = new_sid("MZ")
            await self._send(
                {"event": "connected", "protocol": "Call", "version": "1.0.0"}, numbered=False
            )
            await self._send(
                {
                    "event": "start",
                    "streamSid": r.stream_sid,
                    "start": {
                        "accountSid": r.account_sid,
                        "streamSid": r.stream_sid,
                        "callSid": r.call_sid,
                        "tracks": ["inbound"],
                        "customParameters": dict(target.parameters),
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": SAMPLE_RATE,
                            "channels": 1,
                        },
                    },
                }
            )
            start_at = time.monotonic()
            r.greeting.speech_end_at = start_at
            tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._clock())]
            await self._await_reply(r.greeting, self.greeting_timeout_s)
            if r.greeting.first_audio_at is not None:
                await self._describe(r.greeting)
            for t in turns:
                if self._ended.is_set():
                    break
                res = TurnResult(caller=t.label, kind=t.kind)
                r.turns.append(res)
                self._phase = res
                self._say(f"caller: {t.label}")
                if t.kind == "dtmf":
                    res.speech_end_at = await self._press(t.value)
                    first_timeout = min(self.reply_timeout_s, 10.0)
                else:
                    done = self._speak(t.audio)
                    ended = asyncio.ensure_future(self._ended.wait())
                    waiters: set[asyncio.Future[Any]] = {done, ended}
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    ended.cancel()
                    if not done.done():
                        break
                    res.speech_end_at = done.result()
                    first_timeout = self.reply_timeout_s
                    self._gave_way(res)
                await self._await_reply(res, first_timeout)
                await self._describe(res)
            if "hangup" in r.control and not self._ended.is_set():
                # The agent said it is hanging up: a person waits for the line to drop rather
                # than hanging up over it; a gateway that never drops it still ends as "caller".
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ended.wait(), HANGUP_WAIT_S)
            if not self._ended.is_set():
                await self._send(
                    {
                        "event": "stop",
                        "streamSid": r.stream_sid,
                        "stop": {"accountSid": r.account_sid, "callSid": r.call_sid},
                    }
                )
                self._end("caller")
            return r
        finally:
            self._ended.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._ws is not None:
                await self._ws.close()


async def place_call(
    turns: Sequence[CallerTurn],
    *,
    gateway_url: str,
    public_url: str,
    auth_token: str,
    **options: Any,
) -> CallResult:
    """Synthesize the caller's turns, place the call and return what happened.

    ``options`` are :class:`SimulatedCall`'s (``nats_url``, ``call_sid``, timeouts, ``on_line``).
    """
    prepared = await prepare_turns(turns)
    call = SimulatedCall(
        gateway_url=gateway_url, public_url=public_url, auth_token=auth_token, **options
    )
    return await call.run(prepared)
