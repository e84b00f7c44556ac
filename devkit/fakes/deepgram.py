"""A local stand-in for Deepgram's live transcription WebSocket, for tests and offline demos.

It speaks the protocol the official ``deepgram-sdk`` uses (checked against deepgram-sdk 7.17):

- ``GET /v1/listen?model=..&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true
  &endpointing=300&utterance_end_ms=1000&vad_events=true`` upgraded to a WebSocket, header
  ``Authorization: Token <key>``. A bad key gets HTTP 401 with Deepgram's error body
  (``err_code``, ``err_msg``, ``request_id``); bad parameters get 400.
- The client sends binary audio frames and JSON control messages ``KeepAlive``, ``Finalize``
  and ``CloseStream``. Without either for ``idle_timeout_s`` (10 s, like Deepgram) the server
  closes with 1011 (NET-0001).
- The server answers ``Results`` (interim and final, ``speech_final``, ``from_finalize``,
  words with timings), ``SpeechStarted`` (``vad_events``), ``UtteranceEnd``
  (``utterance_end_ms``) and, on ``CloseStream``, ``Metadata`` then a normal close. A
  ``Finalize`` flushes the audio so far into a ``from_finalize`` final. Between words it keeps
  talking as Deepgram does: an interim about every ``interim_every_s`` while speech goes on
  (empty: our recognizer has no partial words), empty finals over silence.

The audio is really recognized: our embedded recognizer
(:class:`services.asr.providers.local.LocalAsr`, ``local`` extra) runs over what arrives, so
transcripts say what was spoken. Timestamps are seconds of audio received on the connection.

Faults, injected per instance (:meth:`FakeDeepgram.inject`) or by ``--fault KIND[:TIMES]``,
apply to the next connections: ``401``, ``429`` (with ``Retry-After``), ``500`` (refused at the
upgrade), ``hang`` (accepted, then never a word back) and ``cut`` (the TCP connection drops,
no close frame, after ``cut_after_bytes`` of audio or ``cut_after_s`` seconds). Every
connection is recorded (:attr:`FakeDeepgram.connections`).

In-process::

    with FakeDeepgram(api_key="k") as fake:
        settings = Settings(deepgram_url=fake.url, deepgram_api_key="k")

Standalone: ``python -m devkit.fakes.deepgram --port 9400 --api-key k [--fault 429:2]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from devkit.fakes._server import FaultQueue, add_fault_option, cli_parser, serve_in_thread

if TYPE_CHECKING:
    from services.asr.providers.base import AsrProvider, SpeechEvent

log = logging.getLogger(__name__)

FaultKind = Literal["401", "429", "500", "hang", "cut"]
FAULT_KINDS: tuple[FaultKind, ...] = ("401", "429", "500", "hang", "cut")

LISTEN_PATH = "/v1/listen"
ENCODINGS = ("mulaw",)  # what the fake can decode (Deepgram knows more; it refuses the rest)
SAMPLE_RATE = 8000
MODEL_UUID = "1dbdfb4d-85b2-4659-9b2b-7a7c1a3c2c1f"
MODEL_VERSION = "2025-01-01.0"

RecognizerFactory = Callable[[int], "AsrProvider"]
"""Endpointing (ms) in, a streaming recognizer out."""


# ---------------------------------------------------------------- Deepgram's message shapes


def words_for(text: str, *, start: float, end: float, confidence: float) -> list[dict[str, Any]]:
    """Word entries spread evenly over ``[start, end]`` seconds (our recognizer gives no
    per-word times): ``word`` lower-case without punctuation, ``punctuated_word`` as said."""
    tokens = text.split()
    if not tokens:
        return []
    step = max(end - start, 0.0) / len(tokens)
    out = []
    for i, tok in enumerate(tokens):
        plain = re.sub(r"[^\w']", "", tok).lower() or tok.lower()
        out.append(
            {
                "word": plain,
                "start": round(start + i * step, 3),
                "end": round(start + (i + 1) * step, 3),
                "confidence": confidence,
                "punctuated_word": tok,
            }
        )
    return out


def results_message(
    *,
    request_id: str,
    model: str,
    start: float,
    duration: float,
    is_final: bool,
    speech_final: bool,
    transcript: str = "",
    confidence: float = 0.0,
    words: list[dict[str, Any]] | None = None,
    from_finalize: bool = False,
) -> dict[str, Any]:
    """A ``Results`` message (interim or final) exactly as Deepgram sends it."""
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": round(duration, 3),
        "start": round(start, 3),
        "is_final": is_final,
        "speech_final": speech_final,
        "channel": {
            "alternatives": [
                {"transcript": transcript, "confidence": confidence, "words": words or []}
            ]
        },
        "metadata": {
            "request_id": request_id,
            "model_info": {"name": f"general-{model}", "version": MODEL_VERSION, "arch": model},
            "model_uuid": MODEL_UUID,
        },
        "from_finalize": from_finalize,
    }


def speech_started_message(timestamp: float) -> dict[str, Any]:
    """``SpeechStarted`` (sent when ``vad_events=true``)."""
    return {"type": "SpeechStarted", "channel": [0], "timestamp": round(timestamp, 3)}


def utterance_end_message(last_word_end: float) -> dict[str, Any]:
    """``UtteranceEnd`` (sent when ``utterance_end_ms`` is set)."""
    return {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(last_word_end, 3)}


def metadata_message(
    *, request_id: str, model: str, duration: float, sha256: str, channels: int = 1
) -> dict[str, Any]:
    """``Metadata``, the last message before the server closes after ``CloseStream``."""
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "duration": round(duration, 3),
        "channels": channels,
        "models": [MODEL_UUID],
        "model_info": {
            MODEL_UUID: {"name": f"general-{model}", "version": MODEL_VERSION, "arch": model}
        },
    }


def error_message(description: str, *, message: str = "") -> dict[str, Any]:
    """``Error`` (a client text message the server could not parse)."""
    return {
        "type": "Error",
        "variant": "SchemaError",
        "description": description,
        "message": message,
    }


def _http_error(
    status: int, code: str, msg: str, headers: dict[str, str] | None = None
) -> Response:
    request_id = str(uuid.uuid4())
    body = json.dumps({"err_code": code, "err_msg": msg, "request_id": request_id}).encode()
    hdrs = Headers(
        {"Content-Type": "application/json", "dg-request-id": request_id, **(headers or {})}
    )
    hdrs["Content-Length"] = str(len(body))
    return Response(status, http.HTTPStatus(status).phrase, hdrs, body)


# ---------------------------------------------------------------- faults and records


@dataclass
class Fault:
    """One injected failure; ``times`` connections get it (-1: every one until cleared)."""

    kind: FaultKind
    times: int = 1
    retry_after_s: float = 1.0
    cut_after_bytes: int | None = 16000
    cut_after_s: float | None = None


@dataclass
class ConnectionRecord:
    """What one connection attempt carried and how it went (the key reduced to ok / not)."""

    query: dict[str, str]
    key_ok: bool
    fault: FaultKind | None = None
    status: int = 101
    audio_bytes: int = 0
    keep_alives: int = 0
    finalizes: int = 0
    close_stream: bool = False
    messages_sent: list[str] = field(default_factory=list)
    ended: str = ""  # "close_stream", "client", "cut", "idle", "server_stop"


@dataclass
class _State:
    connections: list[ConnectionRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() == "true"


@dataclass(frozen=True)
class ListenOptions:
    """The query parameters the fake honours."""

    model: str
    interim_results: bool
    vad_events: bool
    endpointing_ms: int | None
    utterance_end_ms: int | None

    @classmethod
    def parse(cls, query: dict[str, str]) -> ListenOptions | str:
        """Options, or the reason Deepgram would answer 400."""
        encoding = query.get("encoding")
        if encoding is not None and encoding not in ENCODINGS:
            return f"the fake decodes only {', '.join(ENCODINGS)}"
        if encoding is not None and query.get("sample_rate") != str(SAMPLE_RATE):
            return "sample_rate must be 8000 for mulaw"
        if query.get("channels", "1") != "1":
            return "the fake handles one channel"
        endpointing: int | None = None
        raw_ep = query.get("endpointing")
        if raw_ep and raw_ep != "false":
            if not raw_ep.isdigit():
                return "endpointing must be an integer (ms) or false"
            endpointing = int(raw_ep)
        utterance_end: int | None = None
        if raw_ue := query.get("utterance_end_ms"):
            if not raw_ue.isdigit() or int(raw_ue) < 1000:
                return "utterance_end_ms must be an integer >= 1000"
            if not _truthy(query.get("interim_results")):
                return "utterance_end_ms requires interim_results=true"
            utterance_end = int(raw_ue)
        return cls(
            model=query.get("model", "base"),
            interim_results=_truthy(query.get("interim_results")),
            vad_events=_truthy(query.get("vad_events")),
            endpointing_ms=endpointing,
            utterance_end_ms=utterance_end,
        )


# ---------------------------------------------------------------- one live session


class _Segment:
    """Audio fed to one recognizer stream (a ``Finalize`` ends one and starts the next)."""

    def __init__(self, offset_bytes: int) -> None:
        self.offset_bytes = offset_bytes
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.consumed = 0  # bytes the recognizer has pulled
        self.ended = False
        self.by_finalize = False

    def end(self, *, by_finalize: bool) -> None:
        if not self.ended:
            self.ended = True
            self.by_finalize = by_finalize
            self.queue.put_nowait(None)

    async def audio(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            self.consumed += len(chunk)
            yield chunk


class _Session:
    def __init__(
        self,
        *,
        fake: FakeDeepgram,
        conn: ServerConnection,
        opts: ListenOptions,
        record: ConnectionRecord,
        fault: Fault | None,
    ) -> None:
        self.fake = fake
        self.conn = conn
        self.opts = opts
        self.record = record
        self.fault = fault
        self.request_id = str(uuid.uuid4())
        self.received = 0
        self.sha = hashlib.sha256()
        self.final_end = 0.0  # seconds: audio up to here is covered by final Results
        self.busy = False  # the recognizer is inside an utterance (started, not yet final)
        self.last_word_end = 0.0
        self.utterance_open = False  # words were sent and no UtteranceEnd yet
        self.last_activity = time.monotonic()
        self.opened = time.monotonic()
        self.last_sent_at = self.opened
        self.last_event_at = self.opened
        self.segments: asyncio.Queue[_Segment | None] = asyncio.Queue()
        self.segment = self._new_segment(0)
        self.send_lock = asyncio.Lock()
        self.closed = False
        self.flush_answered = False  # a from_finalize final went out for the pending Finalize

    def _new_segment(self, offset: int) -> _Segment:
        seg = _Segment(offset)
        self.segments.put_nowait(seg)
        return seg

    def _pos_s(self, seg: _Segment, ms: int) -> float:
        return seg.offset_bytes / SAMPLE_RATE + ms / 1000.0

    async def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        async with self.send_lock:
            try:
                await self.conn.send(json.dumps(msg))
                self.record.messages_sent.append(str(msg["type"]))
                self.last_sent_at = time.monotonic()
            except ConnectionClosed:
                self.closed = True

    # -------------------------------------------------------------- tasks

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._recognize()),
            asyncio.create_task(self._ticker()),
            asyncio.create_task(self._watchdog()),
        ]
        try:
            ending = await self._read()
            if ending == "close_stream":
                # Flush what the recognizer still holds, then Metadata and a normal close.
                await asyncio.wait_for(tasks[0], timeout=30)
                await self._cover(self.received / SAMPLE_RATE, from_finalize=False)
                await self.send(
                    metadata_message(
                        request_id=self.request_id,
                        model=self.opts.model,
                        duration=self.received / SAMPLE_RATE,
                        sha256=self.sha.hexdigest(),
                    )
                )
                self.closed = True
                await self.conn.close(1000)
            self.record.ended = ending
        finally:
            self.closed = True
            self.segment.end(by_finalize=False)
            self.segments.put_nowait(None)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self) -> str:
        """Read client frames until CloseStream, a cut, or the client leaving."""
        try:
            async for frame in self.conn:
                self.last_activity = time.monotonic()
                if isinstance(frame, bytes):
                    if self._feed(frame):
                        return "cut"
                    continue
                what = await self._control(frame)
                if what == "close_stream":
                    return what
        except ConnectionClosed:
            pass
        return "idle" if self.record.ended == "idle" else "client"

    def _feed(self, audio: bytes) -> bool:
        """Take audio; True when a ``cut`` fault fires (the transport is already aborted)."""
        self.received += len(audio)
        self.record.audio_bytes += len(audio)
        self.sha.update(audio)
        self.segment.queue.put_nowait(audio)
        f = self.fault
        if f is not None and f.kind == "cut":
            late = f.cut_after_s is not None and time.monotonic() - self.opened >= f.cut_after_s
            if late or (f.cut_after_bytes is not None and self.received >= f.cut_after_bytes):
                self.closed = True
                self.conn.transport.abort()  # no close frame: what a dropped network looks like
                return True
        return False

    async def _control(self, text: str) -> str:
        try:
            msg = json.loads(text)
            kind = msg.get("type") if isinstance(msg, dict) else None
        except ValueError:
            kind = None
        if kind == "KeepAlive":
            self.record.keep_alives += 1
        elif kind == "Finalize":
            self.record.finalizes += 1
            self.segment.end(by_finalize=True)
            self.segment = self._new_segment(self.received)
        elif kind == "CloseStream":
            self.record.close_stream = True
            self.segment.end(by_finalize=False)
            self.segments.put_nowait(None)
            return "close_stream"
        else:
            await self.send(error_message("Unknown or malformed control message", message=text))
        return ""

    async def _recognize(self) -> None:
        try:
            recognizer = await self.fake._recognizer(self.opts.endpointing_ms)
            while (seg := await self.segments.get()) is not None:
                async for ev in recognizer.stream(seg.audio()):
                    await self._on_event(seg, ev)
                if seg.by_finalize:
                    await self._finalize_ack(seg)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Deepgram's answer to an internal failure: close with 1011 (NET-0000).
            log.exception("fake deepgram recognizer failed")
            self.closed = True
            await self.conn.close(1011, "NET-0000: internal error")
            raise

    async def _on_event(self, seg: _Segment, ev: SpeechEvent) -> None:
        self.last_event_at = time.monotonic()
        if ev.kind == "speech_started":
            self.busy = True
            if self.opts.vad_events:
                await self.send(speech_started_message(self._pos_s(seg, ev.audio_ms)))
        elif ev.kind == "interim" and ev.text and self.opts.interim_results:
            start = self._pos_s(seg, ev.speech_start_ms or ev.audio_ms)
            end = self._pos_s(seg, ev.audio_ms)
            conf = ev.confidence if ev.confidence is not None else 0.9
            await self.send(
                results_message(
                    request_id=self.request_id,
                    model=self.opts.model,
                    start=self.final_end,
                    duration=max(end - self.final_end, 0.0),
                    is_final=False,
                    speech_final=False,
                    transcript=ev.text,
                    confidence=conf,
                    words=words_for(ev.text, start=start, end=end, confidence=conf),
                )
            )
        elif ev.kind == "final":
            await self._final(seg, ev)

    async def _final(self, seg: _Segment, ev: SpeechEvent) -> None:
        start = self._pos_s(seg, ev.speech_start_ms if ev.speech_start_ms is not None else 0)
        end = self._pos_s(seg, ev.speech_end_ms if ev.speech_end_ms is not None else ev.audio_ms)
        # A final covers every second since the previous one, up to the end of this speech.
        covered_to = max(end, self.final_end)
        conf = ev.confidence if ev.confidence is not None else 0.9
        flush = seg.ended and seg.by_finalize
        text = ev.text.strip()
        await self.send(
            results_message(
                request_id=self.request_id,
                model=self.opts.model,
                start=self.final_end,
                duration=covered_to - self.final_end,
                is_final=True,
                speech_final=not flush and self.opts.endpointing_ms is not None,
                transcript=text,
                confidence=conf if text else 0.0,
                words=words_for(text, start=start, end=end, confidence=conf),
                from_finalize=flush,
            )
        )
        self.final_end = covered_to
        self.busy = False
        self.flush_answered = self.flush_answered or flush
        if text:
            self.last_word_end = end
            self.utterance_open = True
        if self.utterance_open and self.opts.utterance_end_ms is not None:
            # Our recognizer decided the utterance is over after its own silence window.
            await self.send(utterance_end_message(self.last_word_end))
            self.utterance_open = False

    async def _finalize_ack(self, seg: _Segment) -> None:
        """Deepgram answers every Finalize with a ``from_finalize`` final, even an empty one."""
        if not self.flush_answered:
            end = (seg.offset_bytes + seg.consumed) / SAMPLE_RATE
            await self._cover(end, from_finalize=True, always=True)
        self.flush_answered = False
        self.busy = False

    async def _cover(self, end: float, *, from_finalize: bool, always: bool = False) -> None:
        """An empty final over audio no final has covered yet (flushes end with one)."""
        if end > self.final_end or always:
            await self.send(
                results_message(
                    request_id=self.request_id,
                    model=self.opts.model,
                    start=self.final_end,
                    duration=max(end - self.final_end, 0.0),
                    is_final=True,
                    speech_final=False,
                    from_finalize=from_finalize,
                )
            )
            self.final_end = max(end, self.final_end)

    async def _ticker(self) -> None:
        """What Deepgram sends between words: empty interims while speech goes on (about
        once a second), empty finals over stretches heard without any speech."""
        fake = self.fake
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            seg = self.segment
            pos = (seg.offset_bytes + seg.consumed) / SAMPLE_RATE
            if self.busy:
                if self.opts.interim_results and now - self.last_sent_at >= fake.interim_every_s:
                    await self.send(
                        results_message(
                            request_id=self.request_id,
                            model=self.opts.model,
                            start=self.final_end,
                            duration=max(pos - self.final_end, 0.0),
                            is_final=False,
                            speech_final=False,
                        )
                    )
                continue
            # The recognizer reports an onset a little after the audio it heard, and events
            # queued behind a decode come out right after it: stay clear of both.
            heard = pos - fake.speech_margin_s
            settled = now - self.last_event_at >= 0.3
            if settled and heard - self.final_end >= fake.silence_final_s:
                await self.send(
                    results_message(
                        request_id=self.request_id,
                        model=self.opts.model,
                        start=self.final_end,
                        duration=heard - self.final_end,
                        is_final=True,
                        speech_final=False,
                    )
                )
                self.final_end = heard

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if time.monotonic() - self.last_activity > self.fake.idle_timeout_s:
                self.record.ended = "idle"
                self.closed = True
                await self.conn.close(
                    1011,
                    "Deepgram did not receive audio data or a text message within the timeout "
                    "window. See https://dpgr.am/net0001",
                )
                return


# ---------------------------------------------------------------- the server


def local_recognizers() -> RecognizerFactory:
    """Recognizers backed by our embedded :class:`~services.asr.providers.local.LocalAsr`."""
    from services.asr.providers.local import LocalAsr
    from shared.settings import Settings

    def make(endpointing_ms: int) -> AsrProvider:
        # Deepgram's endpointing is a plain silence timer: so is the fake's.
        return LocalAsr(settings=Settings(endpointing_ms=endpointing_ms, smart_endpointing=False))

    return make


class FakeDeepgram:
    """A Deepgram-compatible live transcription server on loopback, with fault injection."""

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        host: str = "127.0.0.1",
        port: int = 0,
        recognizers: RecognizerFactory | None = None,
        default_endpointing_ms: int = 300,
        silence_final_s: float = 1.0,
        interim_every_s: float = 1.0,
        speech_margin_s: float = 0.8,
        idle_timeout_s: float = 10.0,
    ) -> None:
        """``api_key=None`` accepts any key. Endpointing shorter than
        ``default_endpointing_ms`` (Deepgram's default is 10 ms) uses that instead, since our
        recognizer needs a real pause to end an utterance."""
        self.api_key = api_key
        self.host = host
        self.port = port
        self.default_endpointing_ms = default_endpointing_ms
        self.silence_final_s = silence_final_s
        self.interim_every_s = interim_every_s
        self.speech_margin_s = speech_margin_s
        self.idle_timeout_s = idle_timeout_s
        self._factory = recognizers
        self._recognizers: dict[int, AsrProvider] = {}
        self._rec_lock: asyncio.Lock | None = None
        self._state = _State()
        self._faults = FaultQueue[Fault](FAULT_KINDS)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._pending: dict[int, dict[str, Any]] = {}  # handshake -> handler, per connection

    # -------------------------------------------------------------- test controls

    @property
    def url(self) -> str:
        """``ws://host:port``: Deepgram's ``production`` environment URL (``DEEPGRAM_URL``)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port`` (the SDK's REST ``base``)."""
        return f"http://{self.host}:{self.port}"

    def inject(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        retry_after_s: float = 1.0,
        cut_after_bytes: int | None = 16000,
        cut_after_s: float | None = None,
    ) -> None:
        """Make the next ``times`` connections fail with ``kind`` (-1: all)."""
        self._faults.add(Fault(kind, times, retry_after_s, cut_after_bytes, cut_after_s))

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        self._faults.clear()

    @property
    def connections(self) -> list[ConnectionRecord]:
        """Connection attempts so far (a copy of the list; records update while live)."""
        with self._state.lock:
            return list(self._state.connections)

    def reset(self) -> None:
        """Forget recorded connections and pending faults."""
        with self._state.lock:
            self._state.connections.clear()
        self._faults.clear()

    async def _recognizer(self, endpointing_ms: int | None) -> AsrProvider:
        ep = max(endpointing_ms or 0, self.default_endpointing_ms)
        assert self._rec_lock is not None
        async with self._rec_lock:
            if ep not in self._recognizers:
                factory = self._factory or local_recognizers()
                rec = factory(ep)
                await rec.warm_up()
                self._recognizers[ep] = rec
            return self._recognizers[ep]

    # -------------------------------------------------------------- handshake and handler

    def _key_ok(self, headers: Headers) -> bool:
        if self.api_key is None:
            return True
        scheme, _, key = headers.get("Authorization", "").partition(" ")
        return scheme in ("Token", "Bearer", "token", "bearer") and key == self.api_key

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = dict(parse_qsl(parts.query))
        record = ConnectionRecord(query=query, key_ok=self._key_ok(request.headers))
        with self._state.lock:
            self._state.connections.append(record)
        response: Response | None = None
        fault: Fault | None = None
        if parts.path != LISTEN_PATH:
            response = _http_error(404, "NOT_FOUND", "Not found.")
        elif not record.key_ok:  # a wrong key is refused before any injected fault
            response = _http_error(
                401, "INVALID_AUTH", "Invalid credentials. Could not authenticate."
            )
        else:
            fault = self._faults.take()
            record.fault = fault.kind if fault else None
            response = self._refusal(fault, query)
        if response is not None:
            record.status = response.status_code
        log.info("listen: %d fault=%s", record.status, record.fault or "-")
        if response is not None:
            return response
        conn_state: dict[str, Any] = {"record": record, "fault": fault}
        self._pending[id(conn)] = conn_state
        return None

    @staticmethod
    def _refusal(fault: Fault | None, query: dict[str, str]) -> Response | None:
        kind = fault.kind if fault is not None else None
        if kind == "401":
            return _http_error(401, "INVALID_AUTH", "Invalid credentials. Could not authenticate.")
        if kind == "429":
            assert fault is not None
            return _http_error(
                429,
                "TOO_MANY_REQUESTS",
                "Too many requests. Please try again later.",
                headers={"Retry-After": f"{fault.retry_after_s:g}"},
            )
        if kind == "500":
            return _http_error(500, "INTERNAL_SERVER_ERROR", "An internal error occurred.")
        opts = ListenOptions.parse(query)
        return _http_error(400, "Bad Request", opts) if isinstance(opts, str) else None

    async def _handle(self, conn: ServerConnection) -> None:
        state = self._pending.pop(id(conn), None)
        if state is None:  # pragma: no cover - the handshake always registers it
            return
        record: ConnectionRecord = state["record"]
        fault: Fault | None = state["fault"]
        if fault is not None and fault.kind == "hang":
            # Accepted, then silence: take everything, answer nothing.
            with contextlib.suppress(ConnectionClosed):
                async for frame in conn:
                    if isinstance(frame, bytes):
                        record.audio_bytes += len(frame)
            record.ended = "client"
            return
        opts = ListenOptions.parse(record.query)
        assert not isinstance(opts, str)
        session = _Session(fake=self, conn=conn, opts=opts, record=record, fault=fault)
        try:
            await session.run()
        except Exception:  # a bug in the fake must show, not vanish with the connection
            log.exception("fake deepgram session failed")
            raise

    # -------------------------------------------------------------- lifecycle

    async def serve(self) -> None:
        """Serve until :meth:`stop` (or until cancelled)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._rec_lock = asyncio.Lock()
        async with serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=2**20,
            ping_interval=None,  # Deepgram does not ping; a hung fake must stay hung
        ) as server:
            self._server = server
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.close(close_connections=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        for rec in self._recognizers.values():
            with contextlib.suppress(Exception):
                await rec.aclose()

    def start(self) -> str:
        """Serve in a background thread; returns :attr:`url` once accepting."""
        if self._thread is not None:
            return self.url

        self._thread = serve_in_thread(
            self.serve, name="fake-deepgram", ready=self._ready.is_set, what="fake Deepgram"
        )
        return self.url

    def warm_up(self, endpointing_ms: int | None = None) -> None:
        """Load the recognizer now (the first connection would otherwise wait for it)."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._recognizer(endpointing_ms), self._loop)
        fut.result(timeout=120)

    def stop(self) -> None:
        """Close every connection, stop the server and join its thread."""
        if self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeDeepgram:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m devkit.fakes.deepgram --port N [--fault KIND[:TIMES]] ...``."""
    p = cli_parser(__doc__, port=9400)
    p.add_argument("--api-key", default="test-key", help="the key accepted ('' accepts any)")
    add_fault_option(p, FAULT_KINDS, per="connection")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of 429s")
    p.add_argument("--cut-after-bytes", type=int, default=16000, help="cut: audio before drop")
    p.add_argument("--cut-after-s", type=float, default=None, help="cut: seconds before drop")
    p.add_argument("--endpointing-ms", type=int, default=300, help="minimum silence ending speech")
    p.add_argument("--idle-timeout", type=float, default=10.0, help="close idle sockets (s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = FakeDeepgram(
        api_key=args.api_key or None,
        host=args.host,
        port=args.port,
        default_endpointing_ms=args.endpointing_ms,
        idle_timeout_s=args.idle_timeout,
    )
    for kind, times in args.fault:
        fake.inject(
            kind,
            times=times,
            retry_after_s=args.retry_after,
            cut_after_bytes=args.cut_after_bytes,
            cut_after_s=args.cut_after_s,
        )
    print(f"fake Deepgram on ws://{args.host}:{args.port}{LISTEN_PATH}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(fake.serve())


if __name__ == "__main__":
    main()
