"""ElevenLabs streaming text-to-speech through the official ``elevenlabs`` SDK (``cloud`` extra).

ElevenLabs produces Twilio's format itself (``output_format="ulaw_8000"``), so audio goes out
as it arrives: no resampling, no header. Pieces are regrouped into whole 20 ms frames (a small
first chunk for latency, then 160 ms chunks). SDK and HTTP errors become
:mod:`shared.errors` types; retries are the worker's job (``shared.backoff``), so the SDK's own
are turned off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from services.tts.providers.base import CHUNK_BYTES, TtsProvider
from shared.audio import FRAME_BYTES, MULAW_SILENCE
from shared.errors import ProviderAuthError, ProviderError, ProviderTimeout, ProviderUnavailable
from shared.logging import kv
from shared.settings import Settings

if TYPE_CHECKING:
    from elevenlabs.client import AsyncElevenLabs

log = logging.getLogger(__name__)

PROVIDER = "elevenlabs"
OUTPUT_FORMAT = "ulaw_8000"
DEFAULT_BASE_URL = "https://api.elevenlabs.io"
SDK_CHUNK_BYTES = FRAME_BYTES  # httpx hands over every whole frame as soon as it arrives


class FrameChunker:
    """Regroups arbitrary byte pieces into chunks of whole 20 ms mu-law frames.

    The first chunk goes out as soon as one frame is there (first-audio latency); later chunks
    are exactly ``chunk_bytes`` (fewer, larger bus messages). :meth:`flush` pads the tail with
    silence to a whole frame, so every chunk is a multiple of 160 bytes.
    """

    def __init__(self, *, chunk_bytes: int = CHUNK_BYTES, frame_bytes: int = FRAME_BYTES) -> None:
        if chunk_bytes <= 0 or chunk_bytes % frame_bytes:
            raise ValueError("chunk_bytes must be a positive multiple of frame_bytes")
        self.frame = frame_bytes
        self.chunk = chunk_bytes
        self._buf = bytearray()
        self._started = False

    def push(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the chunks now ready (possibly none)."""
        self._buf += data
        out: list[bytes] = []
        if not self._started and len(self._buf) >= self.frame:
            self._started = True
            n = min(len(self._buf) - len(self._buf) % self.frame, self.chunk)
            out.append(bytes(self._buf[:n]))
            del self._buf[:n]
        while self._started and len(self._buf) >= self.chunk:
            out.append(bytes(self._buf[: self.chunk]))
            del self._buf[: self.chunk]
        return out

    def flush(self) -> bytes:
        """What is left, padded with mu-law silence to a whole frame (b"" if nothing)."""
        if not self._buf:
            return b""
        pad = -len(self._buf) % self.frame
        out = bytes(self._buf) + bytes([MULAW_SILENCE]) * pad
        self._buf.clear()
        return out


def _retry_after(headers: dict[str, str] | None) -> float | None:
    """Seconds from ``Retry-After`` (delta or HTTP date) or ``retry-after-ms``."""
    if not headers:
        return None
    low = {k.lower(): v for k, v in headers.items()}
    if (ms := low.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = low.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _detail_code(body: Any) -> str:
    """ElevenLabs' machine-readable error code, e.g. ``invalid_api_key`` (no free text)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("status"), str):
        return str(detail["status"])[:64]
    return ""


def map_api_error(status: int | None, headers: dict[str, str] | None, body: Any) -> ProviderError:
    """An HTTP error answer from ElevenLabs as one of our errors.

    401/403 (bad key, also ``quota_exceeded``) -> :class:`ProviderAuthError`; 429 -> retryable
    with the server's ``Retry-After``; 408 and 5xx -> retryable; other 4xx -> not retryable.
    """
    code = _detail_code(body)
    msg = f"elevenlabs HTTP {status}" + (f" ({code})" if code else "")
    if status in (401, 403):
        return ProviderAuthError(msg, provider=PROVIDER, status=status)
    if status == 429:
        return ProviderError(
            msg, provider=PROVIDER, retryable=True, retry_after=_retry_after(headers), status=429
        )
    retryable = status is None or status == 408 or status >= 500
    return ProviderError(msg, provider=PROVIDER, retryable=retryable, status=status)


def map_transport_error(exc: httpx.HTTPError) -> ProviderError:
    """A network-level failure (timeout, refused, dropped mid-stream) as a retryable error."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeout(f"elevenlabs timed out ({type(exc).__name__})", provider=PROVIDER)
    return ProviderError(f"elevenlabs connection failed ({type(exc).__name__})", provider=PROVIDER)


class ElevenLabsTts(TtsProvider):
    """ElevenLabs HTTP streaming TTS in Twilio's format (8 kHz mu-law)."""

    name = PROVIDER

    def __init__(self, *, settings: Settings) -> None:
        try:
            from elevenlabs.client import AsyncElevenLabs
            from elevenlabs.core.api_error import ApiError
        except ImportError as e:
            raise ProviderUnavailable(provider=PROVIDER, extra="cloud") from e
        self._api_error: type[ApiError] = ApiError
        self.voice = settings.elevenlabs_voice_id
        self.model = settings.elevenlabs_model
        self.base_url = settings.elevenlabs_base_url or DEFAULT_BASE_URL
        # Our own httpx client: pooled keep-alive connections (no TLS handshake per sentence)
        # and a deterministic close at shutdown.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.provider_timeout_s),
            limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=60),
        )
        self._client: AsyncElevenLabs = AsyncElevenLabs(
            base_url=self.base_url,
            api_key=settings.elevenlabs_api_key.get_secret_value(),
            timeout=settings.provider_timeout_s,
            httpx_client=self._http,
        )

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Stream ``text`` as 8 kHz mu-law chunks whose sizes are multiples of 160 bytes."""
        chunker = FrameChunker()
        stream = self._client.text_to_speech.stream(
            self.voice,
            text=text,
            model_id=self.model,
            output_format=OUTPUT_FORMAT,
            request_options={"chunk_size": SDK_CHUNK_BYTES, "max_retries": 0},
        )
        try:
            async with aclosing(stream):
                async for piece in stream:
                    for chunk in chunker.push(piece):
                        yield chunk
        except self._api_error as e:
            err = map_api_error(e.status_code, e.headers, e.body)
            log.warning("elevenlabs refused", **kv(status=e.status_code, retryable=err.retryable))
            raise err from e
        except httpx.HTTPError as e:
            log.warning("elevenlabs transport error", **kv(error=type(e).__name__))
            raise map_transport_error(e) from e
        if tail := chunker.flush():
            yield tail

    async def warm_up(self) -> None:
        """Open a pooled connection (and check the key) before the first sentence."""
        try:
            await self._client.voices.get_all(request_options={"max_retries": 0})
        except self._api_error as e:
            # Keys scoped to text-to-speech only may not read voices: not fatal.
            log.warning("elevenlabs warm-up refused", **kv(status=e.status_code))
        except httpx.HTTPError as e:
            log.warning("elevenlabs unreachable at warm-up", **kv(error=type(e).__name__))

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()
