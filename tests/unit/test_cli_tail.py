"""``voiceagent tail`` lines: readable, one per message, PHI redacted unless asked."""

from __future__ import annotations

from shared import headers as H
from shared import subjects
from shared.messages import (
    AsrClaim,
    AsrHeartbeat,
    CallEnded,
    Dtmf,
    Played,
    ReplySegment,
    StageFailed,
    Transcript,
    event,
)
from shared.redact import sid_tag
from voiceagent.tail import format_message

SID = "CA" + "ab" * 16
AT = 1_700_000_000.25


def test_final_transcript_shows_utterance_and_redacted_text() -> None:
    msg = Transcript(
        call_sid=SID, utterance_id=3, text="my number is 415 555 0100", is_final=True, at=AT
    )
    line = format_message(subjects.transcript(SID), None, msg.to_bytes())
    assert " transcript " in line and " asr " in line and " u3 " in line
    assert "final" in line and "my number is [PHONE]" in line
    assert "415" not in line and ".250 " in line


def test_show_text_shows_it_verbatim() -> None:
    msg = Transcript(call_sid=SID, utterance_id=3, text="call 415 555 0100", is_final=False)
    line = format_message(subjects.transcript(SID), None, msg.to_bytes(), show_text=True)
    assert "interim" in line and "call 415 555 0100" in line


def test_reply_segment_shows_turn_and_seq() -> None:
    msg = ReplySegment(call_sid=SID, turn=2, seq=1, text="We open at nine.", last=True)
    line = format_message(subjects.reply(SID), None, msg.to_bytes())
    assert " agent " in line and " t2/1 " in line and "We open at nine." in line
    assert "(last)" in line


def test_audio_lines_show_size_and_position_not_bytes() -> None:
    hdrs = {H.TURN: "2", H.SEG: "0", H.CHUNK: "4", H.LAST: "1", H.SERVICE: "tts"}
    line = format_message(subjects.audio_out(SID), hdrs, b"\xff" * 1280)
    assert "audio.out" in line and " tts " in line and "t2/0.4" in line
    assert "audio last" in line and "1280 B 160 ms" in line
    line = format_message(subjects.audio_in(SID, "asr-1"), {H.SEQ: "57"}, b"\xff" * 160)
    assert "audio.in" in line and "#57" in line and "160 B 20 ms" in line


def test_events_and_control() -> None:
    ev = event(call_sid=SID, service="asr", name="asr_final", turn=None, ms=412.5)
    line = format_message(subjects.events(SID), None, ev.to_bytes())
    assert " events " in line and " asr " in line and "asr_final ms=412.5" in line
    played = Played(call_sid=SID, turn=1, seq=0, heard_text="Hello there", complete=False)
    line = format_message(subjects.control(SID), None, played.to_bytes())
    assert "played" in line and "t1/0" in line and "cut" in line
    line = format_message(subjects.control(SID), None, CallEnded(call_sid=SID).to_bytes())
    assert "call_ended" in line and "reason=stop" in line
    line = format_message(subjects.control(SID), None, Dtmf(call_sid=SID, digit="7").to_bytes())
    assert "digit=*" in line and "7" not in line.split("dtmf", 1)[1]
    failed = StageFailed(call_sid=SID, service="asr", reason="recognizer failed")
    line = format_message(subjects.asr_control(SID), None, failed.to_bytes())
    assert " control.asr " in line and "stage_failed" in line and "recognizer failed" in line


def test_cluster_subjects_and_the_call_column() -> None:
    hb = AsrHeartbeat(call_sid=SID, worker_id="asr-host-1")
    line = format_message(subjects.asr_heartbeat(SID), None, hb.to_bytes(), with_call=True)
    assert "_sys.asr.heartbeat" in line and "worker=asr-host-1" in line
    assert sid_tag(SID) in line and SID not in line
    claim = AsrClaim(call_sid=SID, gateway_id="gw-1", attempt=2)
    line = format_message(subjects.ASR_CLAIM, None, claim.to_bytes(), with_call=True)
    assert "_sys.asr.claim" in line and "attempt=2" in line
    line = format_message(subjects.events(SID), None, b"{}", with_call=True, show_text=True)
    assert SID in line


def test_malformed_body_is_a_line_not_a_crash() -> None:
    line = format_message(subjects.reply(SID), None, b"\x00garbage")
    assert "malformed" in line and "8 B" in line
    line = format_message("voice.other", None, b"x")
    assert "voice.other" in line
