"""A local stand-in for ElevenLabs' text-to-speech HTTP API, for tests and offline demos.

It speaks the protocol the official ``elevenlabs`` SDK uses (checked against elevenlabs 2.78):

- ``POST /v1/text-to-speech/{voice_id}/stream?output_format=ulaw_8000`` (also
  ``enable_logging``, ``optimize_streaming_latency``), header ``xi-api-key``, JSON body
  ``{"text", "model_id", "voice_settings", ...}`` -> chunked raw audio, streamed in pieces.
  The audio really says the text: a local synthesizer (espeak-ng or Piper) makes it.
  Formats: ``ulaw_8000`` and ``pcm_<rate>``; anything else is refused with 422.
- ``GET /v1/voices`` -> ``{"voices": [...]}`` (enough for ``client.voices.get_all()``).
- Errors have ElevenLabs' shape: ``{"detail": {"status": "...", "message": "..."}}``.

Faults, injected per instance (:meth:`FakeElevenLabs.inject`) or by ``--fault KIND[:TIMES]``,
apply to the next text-to-speech requests: ``401``, ``429`` (with ``Retry-After``), ``500``,
``hang`` (no answer for ``hang_s``) and ``cut`` (the connection drops after
``cut_after_bytes`` of audio). Every request is recorded (:attr:`FakeElevenLabs.requests`).

In-process::

    with FakeElevenLabs(api_key="k") as fake:
        settings = Settings(elevenlabs_base_url=fake.base_url, elevenlabs_api_key="k")

Standalone: ``python -m devkit.fakes.elevenlabs --port 9300 --api-key k [--fault 429:2]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from devkit.fakes._server import (
    FaultQueue,
    ThreadedFake,
    add_fault_option,
    cli_parser,
)

FaultKind = Literal["401", "429", "500", "hang", "cut"]
FAULT_KINDS: tuple[FaultKind, ...] = ("401", "429", "500", "hang", "cut")

Synth = Callable[[str], Awaitable[bytes]]
"""Text in, 8 kHz mu-law out."""

DEFAULT_VOICES: dict[str, str] = {
    "21m00Tcm4TlvDq8ikWAM": "Rachel",
    "EXAVITQu4vr4xnSDxMaL": "Sarah",
    "JBFqnCBsd6RMkjVDRZzb": "George",
}


@dataclass
class Fault:
    """One injected failure; ``times`` requests get it (-1: every request until cleared)."""

    kind: FaultKind
    times: int = 1
    retry_after_s: float = 1.0
    hang_s: float = 30.0
    cut_after_bytes: int = 1600


@dataclass(frozen=True)
class RecordedRequest:
    """What one text-to-speech request carried (the API key is reduced to ok / not ok)."""

    voice_id: str
    query: dict[str, str]
    body: dict[str, Any]
    key_ok: bool
    fault: FaultKind | None = None


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"detail": {"status": code, "message": message}}, status_code=status, headers=headers
    )


class _CutStream(Response):
    """Sends the headers and part of the body, then drops the connection (no final chunk)."""

    def __init__(self, *, first: bytes, media_type: str) -> None:
        super().__init__(media_type=media_type)
        self.first = first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", (self.media_type or "").encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.first, "more_body": True})
        # Returning without the final body message makes the server close the socket: the
        # client sees an incomplete chunked body, as when a provider's connection breaks.


class _HideCuts(logging.Filter):
    """Drops uvicorn's error line for the responses this fake cuts on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_HideCuts())


def _ulaw_to(fmt: str, mulaw: bytes) -> tuple[bytes, str] | None:
    """Our synthesizer's mu-law converted to the requested ``output_format`` (None: refused)."""
    from shared.audio import SAMPLE_RATE, float_to_pcm16, resample, ulaw_to_float

    if fmt == "ulaw_8000":
        return mulaw, "audio/basic"
    if fmt.startswith("pcm_") and fmt[4:].isdigit():
        rate = int(fmt[4:])
        pcm = resample(ulaw_to_float(mulaw), from_rate=SAMPLE_RATE, to_rate=rate)
        return float_to_pcm16(pcm), "audio/pcm"
    return None


def local_synth(engine: Literal["espeak", "piper"] = "espeak") -> Synth:
    """A :data:`Synth` backed by our local TTS provider (espeak-ng: fast; Piper: natural)."""
    from shared.settings import Settings

    provider: Any = None

    async def synth(text: str) -> bytes:
        nonlocal provider
        if provider is None:
            from services.tts.providers.select import make_local

            provider = make_local(Settings(local_tts_engine=engine))
        out = bytearray()
        async for chunk in provider.synthesize(text):
            out += chunk
        return bytes(out)

    return synth


class FakeElevenLabs(ThreadedFake):
    """An ElevenLabs-compatible server on loopback, with fault injection and request counts."""

    what = "fake ElevenLabs"
    thread_name = "fake-elevenlabs"

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        host: str = "127.0.0.1",
        port: int = 0,
        synth: Synth | None = None,
        engine: Literal["espeak", "piper"] = "espeak",
        piece_bytes: int = 1000,
        piece_delay_s: float = 0.0,
        voices: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.host = host
        self.port = port
        self.synth = synth or local_synth(engine)
        self.piece_bytes = piece_bytes
        self.piece_delay_s = piece_delay_s
        self.voices = dict(DEFAULT_VOICES if voices is None else voices)
        self._state = _State()
        self._faults = FaultQueue[Fault](FAULT_KINDS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/text-to-speech/{voice_id}/stream", self._tts_stream, methods=["POST"]),
                Route("/v1/voices", self._voices, methods=["GET"]),
            ]
        )

    # ------------------------------------------------------------------ test controls

    def inject(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        retry_after_s: float = 1.0,
        hang_s: float = 30.0,
        cut_after_bytes: int = 1600,
    ) -> None:
        """Make the next ``times`` text-to-speech requests fail with ``kind`` (-1: all)."""
        self._faults.add(Fault(kind, times, retry_after_s, hang_s, cut_after_bytes))

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        self._faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Text-to-speech requests received so far (a copy)."""
        with self._state.lock:
            return list(self._state.requests)

    def reset(self) -> None:
        """Forget recorded requests and pending faults."""
        with self._state.lock:
            self._state.requests.clear()
        self._faults.clear()

    def _record(self, req: RecordedRequest) -> None:
        with self._state.lock:
            self._state.requests.append(req)

    # ------------------------------------------------------------------ HTTP handlers

    def _key_ok(self, request: Request) -> bool:
        return request.headers.get("xi-api-key", "") == self.api_key

    async def _voices(self, request: Request) -> Response:
        if not self._key_ok(request):
            return _error(401, "invalid_api_key", "Invalid API key")
        voices = [
            {"voice_id": vid, "name": name, "category": "premade", "labels": {}}
            for vid, name in self.voices.items()
        ]
        return JSONResponse({"voices": voices})

    async def _tts_stream(self, request: Request) -> Response:
        voice_id = request.path_params["voice_id"]
        key_ok = self._key_ok(request)
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            body = None
        fault = self._faults.take()
        self._record(
            RecordedRequest(
                voice_id=voice_id,
                query=dict(request.query_params),
                body=body if isinstance(body, dict) else {},
                key_ok=key_ok,
                fault=fault.kind if fault else None,
            )
        )
        if fault is not None and fault.kind in ("401", "429", "500", "hang"):
            early = await self._fault_response(fault)
            if early is not None:
                return early
        if not request.headers.get("xi-api-key"):
            return _error(
                401,
                "needs_authorization",
                "Neither authorization header nor xi-api-key received, please provide one.",
            )
        if not key_ok:
            return _error(401, "invalid_api_key", "Invalid API key")
        if voice_id not in self.voices:
            return _error(
                404, "voice_not_found", f"A voice with voice_id {voice_id} was not found."
            )
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return JSONResponse(
                {"detail": [{"loc": ["body", "text"], "msg": "field required", "type": "missing"}]},
                status_code=422,
            )
        fmt = request.query_params.get("output_format", "mp3_44100_128")
        converted = _ulaw_to(fmt, await self.synth(text))
        if converted is None:
            return _error(422, "invalid_output_format", f"the fake does not produce {fmt}")
        audio, media_type = converted
        if fault is not None and fault.kind == "cut":
            return _CutStream(first=audio[: fault.cut_after_bytes], media_type=media_type)
        return StreamingResponse(self._pieces(audio), media_type=media_type)

    async def _fault_response(self, fault: Fault) -> Response | None:
        if fault.kind == "401":
            return _error(401, "invalid_api_key", "Invalid API key")
        if fault.kind == "429":
            return _error(
                429,
                "too_many_concurrent_requests",
                "Too many concurrent requests for your subscription.",
                headers={"Retry-After": f"{fault.retry_after_s:g}"},
            )
        if fault.kind == "500":
            return _error(500, "internal_server_error", "An internal error occurred.")
        # hang: answer nothing until the deadline passes or the server stops, then go on.
        released = self._released
        if released is not None:
            try:
                await asyncio.wait_for(released.wait(), fault.hang_s)
            except TimeoutError:
                pass
        return None

    async def _pieces(self, audio: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(audio), self.piece_bytes):
            if i and self.piece_delay_s:
                await asyncio.sleep(self.piece_delay_s)
            yield audio[i : i + self.piece_bytes]

    # ------------------------------------------------------------------ lifecycle

    def _serving(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._released = asyncio.Event()

    def _stopping(self) -> None:
        # Hung requests wait on this: free them so the server can finish.
        if self._loop is not None and self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)


def main(argv: list[str] | None = None) -> None:
    """``python -m devkit.fakes.elevenlabs --port N [--fault KIND[:TIMES]] ...``."""
    p = cli_parser(__doc__, port=9300)
    p.add_argument("--api-key", default="test-key", help="the xi-api-key value accepted")
    p.add_argument("--engine", choices=["espeak", "piper"], default="espeak")
    p.add_argument("--piece-bytes", type=int, default=1000, help="bytes per streamed piece")
    p.add_argument("--piece-delay", type=float, default=0.0, help="seconds between pieces")
    add_fault_option(p, FAULT_KINDS)
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of 429s")
    p.add_argument("--hang-s", type=float, default=30.0, help="how long 'hang' answers nothing")
    p.add_argument("--cut-after", type=int, default=1600, help="cut: audio bytes before the drop")
    args = p.parse_args(argv)
    fake = FakeElevenLabs(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        engine=args.engine,
        piece_bytes=args.piece_bytes,
        piece_delay_s=args.piece_delay,
    )
    for kind, times in args.fault:
        fake.inject(
            kind,
            times=times,
            retry_after_s=args.retry_after,
            hang_s=args.hang_s,
            cut_after_bytes=args.cut_after,
        )
    print(f"fake ElevenLabs on http://{args.host}:{args.port}", flush=True)
    asyncio.run(fake.serve())


if __name__ == "__main__":
    main()
