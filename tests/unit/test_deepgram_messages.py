"""The fake's Deepgram messages, read by the SDK's own types, and how DeepgramAsr maps them."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from devkit.fakes import deepgram as fake
from services.asr.providers.deepgram import (
    DeepgramAsr,
    ResultMapper,
    _retry_after,
    environment,
    map_status,
)
from services.asr.providers.local import LocalAsr
from services.asr.providers.select import make_provider
from shared.errors import ProviderAuthError, ProviderUnavailable
from shared.settings import Settings

pytest.importorskip("deepgram")

from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v1.socket_client import V1SocketClientResponse
from deepgram.listen.v1.types import (
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)

RID = "5f1c7a5e-0000-4000-8000-000000000001"


def sdk(msg: dict[str, Any]) -> Any:
    """What the SDK's socket client hands over for one text frame (its own parsing path)."""
    return construct_type(type_=V1SocketClientResponse, object_=json.loads(json.dumps(msg)))


def results(
    text: str,
    *,
    start: float,
    end: float,
    is_final: bool,
    speech_final: bool = False,
    from_finalize: bool = False,
) -> Any:
    words = fake.words_for(text, start=start + 0.1, end=end - 0.1, confidence=0.9)
    return sdk(
        fake.results_message(
            request_id=RID,
            model="nova-3",
            start=start,
            duration=end - start,
            is_final=is_final,
            speech_final=speech_final,
            transcript=text,
            confidence=0.9 if text else 0.0,
            words=words,
            from_finalize=from_finalize,
        )
    )


# ---------------------------------------------------------------- shapes


def test_results_message_parses_strictly_as_the_sdks_results() -> None:
    msg = fake.results_message(
        request_id=RID,
        model="nova-3",
        start=1.25,
        duration=2.0,
        is_final=True,
        speech_final=True,
        transcript="Book me in, please.",
        confidence=0.93,
        words=fake.words_for("Book me in, please.", start=1.5, end=3.0, confidence=0.93),
        from_finalize=False,
    )
    strict = ListenV1Results.model_validate(msg)  # validated, not just constructed
    parsed = sdk(msg)
    assert isinstance(parsed, ListenV1Results)
    assert parsed == strict
    assert parsed.channel_index == [0, 1]
    assert (parsed.start, parsed.duration, parsed.is_final, parsed.speech_final) == (
        1.25,
        2.0,
        True,
        True,
    )
    alt = parsed.channel.alternatives[0]
    assert alt.transcript == "Book me in, please."
    assert [w.word for w in alt.words] == ["book", "me", "in", "please"]
    assert [w.punctuated_word for w in alt.words] == ["Book", "me", "in,", "please."]
    assert alt.words[0].start == 1.5 and alt.words[-1].end == 3.0
    assert all(a.end <= b.start + 1e-9 for a, b in zip(alt.words, alt.words[1:], strict=False))
    assert parsed.metadata.request_id == RID
    assert parsed.metadata.model_info.arch == "nova-3"
    assert parsed.from_finalize is False


def test_every_other_message_type_parses_as_its_sdk_type() -> None:
    cases = [
        (fake.speech_started_message(0.72), ListenV1SpeechStarted),
        (fake.utterance_end_message(3.4), ListenV1UtteranceEnd),
        (
            fake.metadata_message(request_id=RID, model="nova-3", duration=4.2, sha256="ab" * 32),
            ListenV1Metadata,
        ),
        (fake.error_message("bad message", message="{oops"), ListenV1Error),
    ]
    for msg, typ in cases:
        typ.model_validate(msg)
        assert isinstance(sdk(msg), typ), msg["type"]
    assert sdk(fake.speech_started_message(0.72)).timestamp == 0.72
    assert sdk(fake.utterance_end_message(3.4)).last_word_end == 3.4
    meta = sdk(fake.metadata_message(request_id=RID, model="nova-3", duration=4.2, sha256="ab"))
    assert (meta.duration, meta.channels, meta.request_id) == (4.2, 1, RID)


def test_listen_options_follow_deepgrams_rules() -> None:
    ok = fake.ListenOptions.parse(
        {
            "model": "nova-3",
            "encoding": "mulaw",
            "sample_rate": "8000",
            "channels": "1",
            "interim_results": "true",
            "endpointing": "300",
            "utterance_end_ms": "1000",
            "vad_events": "true",
        }
    )
    assert ok == fake.ListenOptions(
        model="nova-3",
        interim_results=True,
        vad_events=True,
        endpointing_ms=300,
        utterance_end_ms=1000,
    )
    assert isinstance(fake.ListenOptions.parse({"encoding": "mulaw"}), str)  # no sample_rate
    bad_ue = {"utterance_end_ms": "500", "interim_results": "true"}
    assert isinstance(fake.ListenOptions.parse(bad_ue), str)  # under 1000
    assert isinstance(fake.ListenOptions.parse({"utterance_end_ms": "1000"}), str)  # no interims


# ---------------------------------------------------------------- mapping onto SpeechEvent


def test_an_utterance_in_pieces_becomes_started_interims_stopped_final() -> None:
    m = ResultMapper()
    off = 10_000  # this connection's audio began 10 s into the call
    evs = m.on_message(sdk(fake.speech_started_message(0.5)), offset_ms=off)
    evs += m.on_message(results("I would", start=0.0, end=1.0, is_final=False), offset_ms=off)
    evs += m.on_message(
        results("I would like to", start=0.0, end=1.6, is_final=True), offset_ms=off
    )
    evs += m.on_message(results("book", start=1.6, end=2.0, is_final=False), offset_ms=off)
    evs += m.on_message(
        results("book a table.", start=1.6, end=2.6, is_final=True, speech_final=True),
        offset_ms=off,
    )
    evs += m.on_message(sdk(fake.utterance_end_message(2.5)), offset_ms=off)  # already over
    assert [e.kind for e in evs] == [
        "speech_started",
        "interim",
        "interim",
        "speech_stopped",
        "final",
    ]
    assert evs[0].audio_ms == 10_500
    assert evs[1].text == "I would"
    assert evs[2].text == "I would like to book"  # finalized words so far + the interim
    stopped, final = evs[3], evs[4]
    assert final.text == "I would like to book a table."
    assert final.speech_start_ms == 10_500 and final.speech_end_ms == 12_500  # last word end
    assert stopped.audio_ms == final.audio_ms == 12_500
    assert final.confidence == 0.9


def test_utterance_end_closes_an_utterance_that_speech_final_never_did() -> None:
    m = ResultMapper()
    evs = m.on_message(results("Yes.", start=0.0, end=1.0, is_final=True), offset_ms=0)
    assert [e.kind for e in evs] == ["speech_started"]  # words, but Deepgram is not done
    evs = m.on_message(sdk(fake.utterance_end_message(0.9)), offset_ms=0)
    assert [e.kind for e in evs] == ["speech_stopped", "final"]
    assert evs[1].text == "Yes."


def test_noise_that_started_speech_ends_with_an_empty_final() -> None:
    m = ResultMapper()
    evs = m.on_message(sdk(fake.speech_started_message(1.0)), offset_ms=0)
    evs += m.on_message(results("", start=0.0, end=1.2, is_final=False), offset_ms=0)
    evs += m.on_message(results("", start=0.0, end=1.2, is_final=True), offset_ms=0)
    assert [e.kind for e in evs] == ["speech_started"]  # too soon to call it noise
    evs = m.on_message(results("", start=1.2, end=2.0, is_final=True), offset_ms=0)
    assert [(e.kind, e.text) for e in evs] == [("speech_stopped", ""), ("final", "")]


def test_a_replayed_onset_after_a_reconnection_is_not_a_second_utterance() -> None:
    m = ResultMapper()
    first = m.on_message(sdk(fake.speech_started_message(0.4)), offset_ms=0)
    # The socket dropped; the unfinalized audio went out again on a new connection.
    again = m.on_message(sdk(fake.speech_started_message(0.4)), offset_ms=0)
    final = m.on_message(
        results("Hello there.", start=0.0, end=1.5, is_final=True, speech_final=True),
        offset_ms=0,
    )
    assert [e.kind for e in first] == ["speech_started"]
    assert again == []
    assert [e.kind for e in final] == ["speech_stopped", "final"]


def test_flush_at_the_end_of_the_call_keeps_pending_words() -> None:
    m = ResultMapper()
    m.on_message(results("Goodbye", start=0.0, end=0.8, is_final=True), offset_ms=2000)
    evs = m.flush()
    assert [(e.kind, e.text) for e in evs] == [("speech_stopped", ""), ("final", "Goodbye")]
    assert m.flush() == []


# ---------------------------------------------------------------- errors and settings


def test_refused_upgrades_map_onto_our_errors() -> None:
    assert isinstance(map_status(401), ProviderAuthError)
    assert isinstance(map_status(403), ProviderAuthError)
    limited = map_status(429, retry_after=2.0)
    assert limited.retryable and limited.retry_after == 2.0 and limited.status == 429
    assert map_status(500).retryable and map_status(503).retryable
    assert not map_status(400).retryable


def test_retry_after_is_read_from_the_refused_response() -> None:
    from websockets.datastructures import Headers

    class Refused(Exception):
        headers = Headers({"Retry-After": "3"})

    try:
        try:
            raise Refused()
        except Refused:
            raise RuntimeError("api error") from None
    except RuntimeError as e:
        assert _retry_after(e) == 3.0


def test_deepgram_url_points_every_endpoint_at_one_host() -> None:
    env = environment(Settings(deepgram_url="ws://127.0.0.1:9400/"))
    assert env.production == "ws://127.0.0.1:9400"
    assert env.base == "http://127.0.0.1:9400"
    real = environment(Settings(deepgram_url=""))
    assert real.production == "wss://api.deepgram.com"


def test_auto_picks_deepgram_only_with_a_key() -> None:
    with_key = make_provider(Settings(asr_provider="auto", deepgram_api_key="k"))
    assert isinstance(with_key, DeepgramAsr)
    assert isinstance(make_provider(Settings(asr_provider="auto", deepgram_api_key="")), LocalAsr)
    assert isinstance(make_provider(Settings(asr_provider="local", deepgram_api_key="k")), LocalAsr)


def test_missing_sdk_falls_back_under_auto_and_fails_under_deepgram(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "deepgram", None)  # as if the 'cloud' extra were absent
    caplog.set_level(logging.INFO, logger="services.asr.providers.select")
    provider = make_provider(Settings(asr_provider="auto", deepgram_api_key="k"))
    assert isinstance(provider, LocalAsr)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "voiceagent[cloud]" in errors[0]
    with pytest.raises(ProviderUnavailable, match="cloud"):
        make_provider(Settings(asr_provider="deepgram", deepgram_api_key="k"))
