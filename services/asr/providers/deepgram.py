"""Deepgram streaming recognition through the official ``deepgram-sdk`` (``cloud`` extra).

One live WebSocket per call (``/v1/listen``, 8 kHz mu-law, interim results, VAD events,
endpointing and utterance-end). Deepgram's messages become :class:`SpeechEvent`:
``SpeechStarted`` -> ``speech_started``; interim ``Results`` -> ``interim`` (the utterance's
finalized words so far plus the interim words); final ``Results`` pieces are joined until
``speech_final`` (or ``from_finalize``, or ``UtteranceEnd``) closes the utterance ->
``speech_stopped`` then ``final``. As with the local recognizer, a ``speech_started`` that
turns out to be noise ends with ``speech_stopped`` and an empty ``final``.

Resilience: audio is kept from the end of the last final result (what Deepgram has not
committed to yet). If the socket drops, Deepgram refuses (429 / 5xx) or stops answering while
audio flows (``ASR_STALL_S``), the provider reconnects with backoff and re-sends that audio, so
no caller words are lost; positions stay in the call's timeline across connections. It gives
up with :class:`~shared.errors.ProviderError` (:class:`~shared.errors.ProviderTimeout` when
Deepgram went silent) once it has been without a working connection for
``PROVIDER_TIMEOUT_S``; a refused key raises :class:`~shared.errors.ProviderAuthError` at once.

Keep-alive: Deepgram closes a socket that gets nothing for 10 s. Twilio streams audio (comfort
noise or digital silence) continuously, so in a call the audio itself keeps the socket open;
``KeepAlive`` goes out only when no audio was sent for :data:`KEEPALIVE_S` (a stalled gateway,
a re-claim). Silence is sent, not skipped: Deepgram's endpointing needs it to end utterances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections.abc import AsyncIterator
from statistics import fmean
from typing import TYPE_CHECKING, Any

from services.asr.providers.base import AsrProvider, SpeechEvent
from shared.audio import SAMPLE_RATE
from shared.errors import ProviderAuthError, ProviderError, ProviderTimeout, ProviderUnavailable
from shared.logging import kv
from shared.metrics import PROVIDER_ERRORS, PROVIDER_RETRIES
from shared.settings import Settings

if TYPE_CHECKING:
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
    from deepgram.listen.v1.socket_client import AsyncV1SocketClient

log = logging.getLogger(__name__)

PROVIDER = "deepgram"
SERVICE = "asr"
DEFAULT_URL = "wss://api.deepgram.com"
BYTES_PER_MS = SAMPLE_RATE // 1000  # 8 kHz mu-law: one byte per sample
KEEPALIVE_S = 4.0  # Deepgram closes after 10 s without audio or a text message
OPEN_TIMEOUT_S = 5.0  # one WebSocket upgrade, at most
MAX_SEND_BYTES = 8000  # re-sent backlog goes out in 1 s pieces
MAX_REPLAY_MS = 30_000  # audio kept for a replay when Deepgram finalizes nothing for long
FALSE_ALARM_MS = 500  # an empty final this long after a SpeechStarted with no words: noise
BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)

_END = object()


# --------------------------------------------------------------------------- errors


def _retry_after(exc: BaseException) -> float | None:
    """``Retry-After`` seconds of the refused upgrade behind an SDK ``ApiError``."""
    # The SDK raises ApiError from inside its handler of websockets' InvalidStatusCode, whose
    # response headers (unlike ApiError.headers, which are the request's) hold the hint.
    cause = exc.__cause__ or exc.__context__
    headers = getattr(cause, "headers", None)
    if headers is None:
        headers = getattr(getattr(cause, "response", None), "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def map_status(status: int | None, *, retry_after: float | None = None) -> ProviderError:
    """A refused WebSocket upgrade as one of our errors.

    401/403 -> :class:`ProviderAuthError`; 429 -> retryable with ``retry_after``; 408 and
    5xx -> retryable; other 4xx (bad parameters) -> not retryable.
    """
    msg = f"deepgram refused the stream (HTTP {status})"
    if status in (401, 403):
        return ProviderAuthError(msg, provider=PROVIDER, status=status)
    if status == 429:
        return ProviderError(
            msg, provider=PROVIDER, retryable=True, retry_after=retry_after, status=429
        )
    retryable = status is None or status == 408 or status >= 500
    return ProviderError(msg, provider=PROVIDER, retryable=retryable, status=status)


def _wrap(exc: BaseException, api_error: type[BaseException]) -> ProviderError:
    """Any failure of a connection attempt or of a live socket as a :class:`ProviderError`."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, api_error):
        return map_status(getattr(exc, "status_code", None), retry_after=_retry_after(exc))
    if isinstance(exc, TimeoutError):
        return ProviderTimeout("deepgram did not answer in time", provider=PROVIDER)
    return ProviderError(f"deepgram connection failed ({type(exc).__name__})", provider=PROVIDER)


# --------------------------------------------------------------------------- message mapping


class ResultMapper:
    """Deepgram live messages (the SDK's parsed types) in, :class:`SpeechEvent` out.

    Pure bookkeeping, kept across reconnections: ``offset_ms`` of each message is the call
    position where the connection's audio began (Deepgram's times restart at 0 on each).
    """

    def __init__(self) -> None:
        self.in_speech = False
        self._parts: list[str] = []
        self._confidences: list[float] = []
        self._start_ms: int | None = None
        self._end_ms: int | None = None
        self._interim = ""

    def on_message(self, msg: Any, *, offset_ms: int) -> list[SpeechEvent]:
        """Events for one parsed message (unknown types: none)."""
        kind = getattr(msg, "type", None)
        if kind == "Results":
            return self._results(msg, offset_ms)
        if kind == "SpeechStarted":
            return self._started(offset_ms + _ms(msg.timestamp))
        if kind == "UtteranceEnd":
            if self._parts or self.in_speech:
                last = offset_ms + _ms(msg.last_word_end)
                return self._end(last if self._end_ms is None else max(last, self._end_ms))
        return []

    def flush(self) -> list[SpeechEvent]:
        """The stream is over: close the utterance in progress."""
        if self._parts or self.in_speech:
            return self._end(self._end_ms)
        return []

    def _started(self, at_ms: int) -> list[SpeechEvent]:
        if self.in_speech:
            return []  # a replay after a reconnection hears the same onset again
        self.in_speech = True
        self._start_ms = at_ms
        return [SpeechEvent(kind="speech_started", audio_ms=at_ms, speech_start_ms=at_ms)]

    def _results(self, msg: Any, offset_ms: int) -> list[SpeechEvent]:
        alts = msg.channel.alternatives
        alt = alts[0] if alts else None
        text = " ".join(alt.transcript.split()) if alt is not None else ""
        words = alt.words if alt is not None else []
        end_ms = offset_ms + _ms(msg.start + msg.duration)
        out: list[SpeechEvent] = []
        if text:
            first = offset_ms + _ms(words[0].start if words else msg.start)
            out += self._started(first)
            self._end_ms = offset_ms + _ms(words[-1].end) if words else end_ms
        if not msg.is_final:
            if text:
                self._interim = text
                out.append(
                    SpeechEvent(
                        kind="interim",
                        audio_ms=end_ms,
                        text=" ".join([*self._parts, text]),
                        confidence=alt.confidence if alt is not None else None,
                        speech_start_ms=self._start_ms,
                        speech_end_ms=self._end_ms,
                    )
                )
            return out
        if text:
            self._parts.append(text)
            self._confidences.append(alt.confidence if alt is not None else 0.0)
        self._interim = ""
        if msg.speech_final or msg.from_finalize:
            if self._parts or self.in_speech:
                out += self._end(self._end_ms if self._parts else end_ms)
        elif self._false_alarm(end_ms):
            out += self._end(end_ms)
        return out

    def _false_alarm(self, final_end_ms: int) -> bool:
        """A final with no words well after a SpeechStarted that never produced any."""
        return (
            self.in_speech
            and not self._parts
            and not self._interim
            and self._start_ms is not None
            and final_end_ms - self._start_ms >= FALSE_ALARM_MS
        )

    def _end(self, end_ms: int | None) -> list[SpeechEvent]:
        start = self._start_ms
        end = end_ms if end_ms is not None else (start or 0)
        text = " ".join(self._parts)
        conf = round(fmean(self._confidences), 3) if self._confidences else None
        self.in_speech = False
        self._parts, self._confidences, self._interim = [], [], ""
        self._start_ms = self._end_ms = None
        return [
            SpeechEvent(
                kind="speech_stopped", audio_ms=end, speech_start_ms=start, speech_end_ms=end
            ),
            SpeechEvent(
                kind="final",
                audio_ms=end,
                text=text,
                confidence=conf,
                speech_start_ms=start,
                speech_end_ms=end,
            ),
        ]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


# --------------------------------------------------------------------------- one call


class _CallStream:
    """One call: reads its audio, holds the replay buffer, (re)connects, maps messages."""

    def __init__(self, provider: DeepgramAsr, audio: AsyncIterator[bytes]) -> None:
        self._p = provider
        self._audio = audio
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._mapper = ResultMapper()
        self._buf = bytearray()  # audio from _base to _received, not yet finalized
        self._base = 0  # call position (bytes) of _buf[0]
        self._received = 0
        self._sent = 0  # how far the current connection has sent
        self._audio_done = False
        self._wake = asyncio.Event()
        self._closing = False
        self._last_msg = time.monotonic()
        self._sent_since_msg = 0
        self._healthy = False  # the current connection has answered something
        self._give_up_at = 0.0  # monotonic: end of the current outage's deadline

    async def events(self) -> AsyncIterator[SpeechEvent]:
        reader = asyncio.create_task(self._read_audio())
        pump = asyncio.create_task(self._pump())
        try:
            while True:
                item = await self._out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in (reader, pump):
                task.cancel()
            await asyncio.gather(reader, pump, return_exceptions=True)

    # ------------------------------------------------------------------ audio in

    async def _read_audio(self) -> None:
        try:
            async for chunk in self._audio:
                if chunk:
                    self._buf += chunk
                    self._received += len(chunk)
                    self._cap()
                    self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the worker's audio source broke: end the stream with it
            self._out.put_nowait(e)
        finally:
            self._audio_done = True
            self._wake.set()

    def _cap(self) -> None:
        # Bounded memory when Deepgram finalizes nothing for long: forget the oldest audio
        # it has already been sent (never unsent audio: that would shift the timeline).
        excess = len(self._buf) - MAX_REPLAY_MS * BYTES_PER_MS
        if excess > 0:
            self._commit(self._base + min(excess, max(0, self._sent - self._base)))

    def _commit(self, pos: int) -> None:
        """Deepgram finalized the audio up to call position ``pos``: no replay needed."""
        pos = min(pos, self._sent, self._received)
        if pos > self._base:
            del self._buf[: pos - self._base]
            self._base = pos

    # ------------------------------------------------------------------ connections

    async def _pump(self) -> None:
        """Connections until the audio ends and is flushed, or the outage outlasts the deadline.

        The deadline (``PROVIDER_TIMEOUT_S``) runs from the start of the call, or from the
        moment a working connection (one that answered) failed; a connection that never
        answers does not reset it, so a hanging Deepgram cannot keep a call dead forever.
        """
        deadline_s = self._p.settings.provider_timeout_s
        outage_since = time.monotonic()
        failures = 0
        while True:
            self._give_up_at = outage_since + deadline_s
            remaining = deadline_s - (time.monotonic() - outage_since)
            try:
                await self._connection(max(0.1, min(OPEN_TIMEOUT_S, remaining)))
                for ev in self._mapper.flush():
                    self._out.put_nowait(ev)
                self._out.put_nowait(_END)
                return
            except asyncio.CancelledError:
                raise
            except ProviderError as e:
                err = e
            except Exception as e:  # a bug: end this call's stream loudly, not silently
                log.exception("deepgram stream crashed")
                err = ProviderError(
                    f"deepgram stream crashed: {type(e).__name__}",
                    provider=PROVIDER,
                    retryable=False,
                )
            kind = type(err).__name__
            PROVIDER_ERRORS.labels(SERVICE, PROVIDER, kind).inc()
            if self._healthy:  # this connection worked: a new outage starts
                self._healthy = False
                failures = 0
                # A silent Deepgram has been out since its last message, a dropped one since now.
                stalled = isinstance(err, ProviderTimeout)
                outage_since = self._last_msg if stalled else time.monotonic()
            left = deadline_s - (time.monotonic() - outage_since)
            delay = err.retry_after if err.retry_after is not None else _backoff(failures)
            if not err.retryable or delay >= left:
                log.error(
                    "deepgram gave up",
                    **kv(
                        error=kind,
                        status=err.status,
                        retryable=err.retryable,
                        attempts=failures + 1,
                    ),
                )
                self._out.put_nowait(err)
                return
            failures += 1
            PROVIDER_RETRIES.labels(SERVICE, PROVIDER).inc()
            log.warning(
                "deepgram stream failed; reconnecting",
                **kv(
                    error=kind,
                    status=err.status,
                    attempt=failures,
                    delay_s=round(delay, 2),
                    replay_ms=(self._received - self._base) // BYTES_PER_MS,
                ),
            )
            await asyncio.sleep(delay)

    async def _connection(self, open_timeout: float) -> None:
        """One WebSocket: replay the unfinalized audio, stream the rest, close at the end."""
        p = self._p
        async with contextlib.AsyncExitStack() as stack:
            try:
                conn = await asyncio.wait_for(
                    stack.enter_async_context(p.open_stream()), open_timeout
                )
            except (asyncio.CancelledError, ProviderError):
                raise
            except Exception as e:
                raise _wrap(e, p.api_error) from e
            offset = self._base
            self._sent = offset
            self._last_msg = time.monotonic()
            self._sent_since_msg = 0
            self._closing = False
            listener = asyncio.create_task(self._listen(conn, offset))
            try:
                await self._send_all(conn, listener)
                self._closing = True
                await conn.send_close_stream()
                # Deepgram flushes its last results, sends Metadata and closes.
                if not await self._closed(listener):
                    if self._base < self._received:  # words may be unfinalized: replay them
                        raise ProviderTimeout(
                            "deepgram stalled after CloseStream", provider=PROVIDER
                        )
                    log.info("deepgram did not close after CloseStream; leaving it")
            except (asyncio.CancelledError, ProviderError):
                raise
            except Exception as e:
                raise _wrap(e, p.api_error) from e
            finally:
                listener.cancel()
                with contextlib.suppress(BaseException):
                    await listener

    async def _closed(self, listener: asyncio.Task[None]) -> bool:
        """Wait for the server to close; False if it goes silent for ``ASR_STALL_S`` first."""
        stall_s = self._p.settings.asr_stall_s
        while True:
            left = stall_s - (time.monotonic() - self._last_msg)
            if left <= 0:
                return False
            done, _ = await asyncio.wait({listener}, timeout=left)
            if done:
                listener.result()
                return True

    async def _send_all(self, conn: AsyncV1SocketClient, listener: asyncio.Task[None]) -> None:
        stall_s = self._p.settings.asr_stall_s
        last_send = time.monotonic()
        while True:
            if listener.done():
                listener.result()  # raises why it ended
                raise ProviderError("deepgram closed the stream early", provider=PROVIDER)
            if self._sent < self._received:
                start = self._sent - self._base
                chunk = bytes(self._buf[start : start + MAX_SEND_BYTES])
                await conn.send_media(chunk)
                self._sent += len(chunk)
                self._sent_since_msg += len(chunk)
                last_send = time.monotonic()
            elif self._audio_done:
                return
            else:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):  # no task per frame, unlike wait_for
                        await self._wake.wait()
                if time.monotonic() - last_send >= KEEPALIVE_S:
                    await conn.send_keep_alive()
                    last_send = time.monotonic()
            now = time.monotonic()
            silent = now - self._last_msg
            if silent >= stall_s and self._sent_since_msg >= stall_s * SAMPLE_RATE:
                raise ProviderTimeout(
                    f"deepgram sent nothing for {silent:.1f} s of audio", provider=PROVIDER
                )
            if not self._healthy and self._sent_since_msg and now >= self._give_up_at:
                # Still in an outage (this socket never answered) and its deadline is over.
                raise ProviderTimeout(
                    "deepgram did not answer before the deadline", provider=PROVIDER
                )

    async def _listen(self, conn: AsyncV1SocketClient, offset: int) -> None:
        offset_ms = offset // BYTES_PER_MS
        try:
            async for msg in conn:
                self._last_msg = time.monotonic()
                self._sent_since_msg = 0
                self._healthy = True
                kind = getattr(msg, "type", None)
                if kind == "Results" and msg.is_final:
                    self._commit(offset + round((msg.start + msg.duration) * SAMPLE_RATE))
                elif kind == "Error":
                    log.warning("deepgram error message", **kv(variant=msg.variant))
                for ev in self._mapper.on_message(msg, offset_ms=offset_ms):
                    self._out.put_nowait(ev)
        finally:
            self._wake.set()
        if not self._closing:
            raise ProviderError("deepgram closed the stream", provider=PROVIDER)


def _backoff(failures: int) -> float:
    return BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]


# --------------------------------------------------------------------------- provider


def environment(settings: Settings) -> DeepgramClientEnvironment:
    """Deepgram's endpoints: production, or all on ``DEEPGRAM_URL`` (a proxy, a fake)."""
    from deepgram import DeepgramClientEnvironment

    if not settings.deepgram_url:
        return DeepgramClientEnvironment.PRODUCTION
    ws = settings.deepgram_url.rstrip("/")
    if ws.startswith("http"):
        ws = "ws" + ws[len("http") :]
    http = "http" + ws[len("ws") :]
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


class DeepgramAsr(AsrProvider):
    """Deepgram live transcription, one WebSocket per call, reconnecting without losing words."""

    name = PROVIDER
    default_max_calls = 200  # network-bound: the socket count is the limit

    def __init__(self, *, settings: Settings) -> None:
        try:
            with warnings.catch_warnings():
                # The SDK imports websockets' legacy client, which warns on import.
                warnings.simplefilter("ignore", DeprecationWarning)
                from deepgram import AsyncDeepgramClient
                from deepgram.core.api_error import ApiError
        except ImportError as e:
            raise ProviderUnavailable(provider=PROVIDER, extra="cloud") from e
        self.settings = settings
        self.api_error: type[Exception] = ApiError
        self._client: AsyncDeepgramClient = AsyncDeepgramClient(
            api_key=settings.deepgram_api_key.get_secret_value(),
            environment=environment(settings),
        )

    def open_stream(self) -> contextlib.AbstractAsyncContextManager[AsyncV1SocketClient]:
        """An unopened live connection with this call's parameters (enter it to connect)."""
        s = self.settings
        cm: contextlib.AbstractAsyncContextManager[AsyncV1SocketClient]
        cm = self._client.listen.v1.connect(
            model=s.deepgram_model,
            encoding="mulaw",
            sample_rate=SAMPLE_RATE,
            channels=1,
            interim_results="true",
            # Smart endpointing: Deepgram cuts at the short pause, our decision ends the turn.
            endpointing=s.endpointing_min_ms if s.smart_endpointing else s.endpointing_ms,
            utterance_end_ms=s.deepgram_utterance_end_ms,
            vad_events="true",
        )
        return cm

    def stream(self, audio: AsyncIterator[bytes]) -> AsyncIterator[SpeechEvent]:
        """Recognize one call (see the module docstring for reconnection and errors)."""
        return _CallStream(self, audio).events()

    async def warm_up(self) -> None:
        """Open and close one stream (no audio): a refused key stops the worker at start
        (:class:`ProviderAuthError`) instead of failing every call; an unreachable Deepgram
        is only logged, since it may be back before the first call."""
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S), self.open_stream() as conn:
                await conn.send_close_stream()
        except Exception as e:
            err = _wrap(e, self.api_error)
            if isinstance(err, ProviderAuthError):
                log.error("deepgram refused the API key", **kv(status=err.status))
                raise err from e
            log.warning("deepgram unreachable at start", **kv(error=str(err)))
            return
        log.info("deepgram ready", **kv(model=self.settings.deepgram_model))
