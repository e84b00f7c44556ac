"""Subjects and bus message schemas."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared import messages as m
from shared import subjects as s


def test_subjects_are_functions_of_the_call_sid() -> None:
    sid = "CA123"
    assert s.audio_in(sid, "asr-host.example-7") == "voice.CA123.audio.in.asr-host_example-7"
    assert s.worker_audio_in("asr-host.example-7") == "voice.*.audio.in.asr-host_example-7"
    assert s.kind_of("voice.CA123.audio.in.asr-1") == "audio.in"
    assert s.kind_of("voice.CA123.transcript") == "transcript"
    assert s.kind_of("voice._sys.asr.claim") == "other"
    assert s.transcript(sid) == "voice.CA123.transcript"
    assert s.reply(sid) == "voice.CA123.reply"
    assert s.audio_out(sid) == "voice.CA123.audio.out"
    assert s.control(sid) == "voice.CA123.control"
    assert s.events(sid) == "voice.CA123.events"
    assert s.call_all(sid) == "voice.CA123.>"
    assert s.call_sid_of("voice.CA123.reply") == "CA123"


@pytest.mark.parametrize("bad", ["CA.1", "CA*", "CA>", "", "a b"])
def test_subject_refuses_sids_that_would_address_other_calls(bad: str) -> None:
    with pytest.raises(ValueError):
        s.audio_in(bad, "asr-1")


def test_control_round_trip_by_discriminator() -> None:
    msg = m.Interrupt(call_sid="CA1", turn=3)
    back = m.parse_control(msg.to_bytes())
    assert isinstance(back, m.Interrupt) and back.turn == 3 and back.v == 1


def test_transcript_union_parses_each_kind() -> None:
    for msg in (
        m.SpeechStarted(call_sid="CA1", utterance_id=1, audio_ms=100),
        m.SpeechStopped(call_sid="CA1", utterance_id=1, audio_ms=900, speech_ms=800),
        m.Transcript(call_sid="CA1", utterance_id=1, text="hi", is_final=True),
    ):
        assert type(m.parse_transcript(msg.to_bytes())) is type(msg)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"type":"interrupt"}', b'{"type":"nope","call_sid":"CA1"}', b"\xff\xfe"],
)
def test_malformed_control_is_rejected(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        m.parse_control(raw)
