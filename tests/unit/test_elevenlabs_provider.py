"""ElevenLabs provider pieces that need no server: frame regrouping and error mapping."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.tts.providers.base import CHUNK_BYTES
from services.tts.providers.elevenlabs import (
    ElevenLabsTts,
    FrameChunker,
    map_api_error,
    map_transport_error,
)
from shared.audio import FRAME_BYTES, MULAW_SILENCE
from shared.errors import ProviderAuthError, ProviderTimeout, ProviderUnavailable
from shared.settings import Settings


def _run(pieces: list[bytes]) -> list[bytes]:
    chunker = FrameChunker()
    out = [c for p in pieces for c in chunker.push(p)]
    if tail := chunker.flush():
        out.append(tail)
    return out


@given(st.lists(st.binary(min_size=0, max_size=3000), max_size=12))
def test_chunks_are_whole_frames_and_keep_every_byte(pieces: list[bytes]) -> None:
    out = _run(pieces)
    data = b"".join(pieces)
    joined = b"".join(out)
    assert all(c and len(c) % FRAME_BYTES == 0 and len(c) <= CHUNK_BYTES for c in out)
    assert joined[: len(data)] == data
    pad = joined[len(data) :]
    assert len(pad) < FRAME_BYTES and set(pad) <= {MULAW_SILENCE}


def test_first_chunk_leaves_as_soon_as_one_frame_arrived() -> None:
    chunker = FrameChunker()
    assert chunker.push(b"\x01" * 100) == []
    first = chunker.push(b"\x01" * 100)
    assert [len(c) for c in first] == [FRAME_BYTES]
    # After the first, chunks wait for a full CHUNK_BYTES (fewer bus messages).
    assert chunker.push(b"\x01" * (CHUNK_BYTES - 41)) == []
    assert [len(c) for c in chunker.push(b"\x01")] == [CHUNK_BYTES]


def test_large_pieces_are_split_into_chunk_sized_messages() -> None:
    out = _run([b"\x02" * (CHUNK_BYTES * 3 + 500)])
    assert [len(c) for c in out] == [CHUNK_BYTES, CHUNK_BYTES, CHUNK_BYTES, 640]


def _detail(code: str) -> dict[str, object]:
    return {"detail": {"status": code, "message": "whatever"}}


def test_refused_key_is_an_auth_error_that_is_not_retried() -> None:
    for status in (401, 403):
        err = map_api_error(status, {}, _detail("invalid_api_key"))
        assert isinstance(err, ProviderAuthError)
        assert not err.retryable and err.status == status
        assert "invalid_api_key" in str(err)


def test_rate_limit_is_retryable_with_the_servers_delay() -> None:
    err = map_api_error(429, {"retry-after": "2"}, _detail("too_many_concurrent_requests"))
    assert err.retryable and err.retry_after == 2.0 and err.status == 429
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    dated = map_api_error(429, {"Retry-After": later}, None)
    assert dated.retry_after is not None and 25 < dated.retry_after <= 30
    assert map_api_error(429, {"retry-after-ms": "1500"}, None).retry_after == 1.5
    assert map_api_error(429, {}, None).retry_after is None


def test_server_errors_are_retryable_and_client_errors_are_not() -> None:
    assert map_api_error(500, {}, _detail("internal_server_error")).retryable
    assert map_api_error(503, {}, "Service Unavailable").retryable
    assert not map_api_error(404, {}, _detail("voice_not_found")).retryable
    assert not map_api_error(422, {}, {"detail": [{"msg": "field required"}]}).retryable


def test_error_message_never_carries_the_servers_free_text() -> None:
    err = map_api_error(400, {}, {"detail": {"status": "bad", "message": "text was: my SSN"}})
    assert "SSN" not in str(err)


def test_transport_failures_are_retryable_and_timeouts_say_so() -> None:
    timeout = map_transport_error(httpx.ReadTimeout("slow"))
    assert isinstance(timeout, ProviderTimeout) and timeout.retryable
    cut = map_transport_error(httpx.RemoteProtocolError("incomplete chunked read"))
    assert cut.retryable and not isinstance(cut, ProviderTimeout)


def test_missing_sdk_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "elevenlabs.client", None)
    with pytest.raises(ProviderUnavailable) as info:
        ElevenLabsTts(settings=Settings(elevenlabs_api_key="k"))
    assert "voiceagent[cloud]" in str(info.value) and info.value.provider == "elevenlabs"
