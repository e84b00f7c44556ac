"""Playback queue: order, marks, skips, pacing and barge-in accounting, on a fake clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from services.gateway.playback import (
    FirstAudio,
    PlaybackQueue,
    SendMark,
    SendMedia,
    Skipped,
    heard_prefix,
)

FRAME = 160


def audio(byte: int, n_frames: int) -> bytes:
    return bytes([byte]) * (FRAME * n_frames)


@dataclass
class Twilio:
    """What Twilio receives, with the (fake) time each frame was sent."""

    sent: list[tuple[float, object]] = field(default_factory=list)

    def media(self) -> bytes:
        return b"".join(a.data for _, a in self.sent if isinstance(a, SendMedia))

    def marks(self) -> list[str]:
        return [a.name for _, a in self.sent if isinstance(a, SendMark)]

    def order(self) -> list[str]:
        """The byte value of each frame (segments are filled with distinct bytes) and marks."""
        out: list[str] = []
        for _, a in self.sent:
            if isinstance(a, SendMedia):
                out.append(f"{a.data[0]:02x}")
            elif isinstance(a, SendMark):
                out.append(f"mark {a.name}")
        return out


def run(q: PlaybackQueue, tw: Twilio, start: float, end: float, step: float = 0.001) -> float:
    """Drive the queue like the session's loop does, polling every ``step`` of fake time."""
    now = start
    while now < end:
        actions, _ = q.poll(now)
        tw.sent.extend((now, a) for a in actions)
        now += step
    return now


def reply(q: PlaybackQueue, turn: int, seq: int, text: str, last: bool, now: float = 0.0) -> None:
    q.add_reply(turn=turn, seq=seq, text=text, last=last, speech_ended_at=None, now=now)


def test_out_of_order_chunks_and_segments_play_in_turn_seq_order() -> None:
    q = PlaybackQueue(lead_s=0.2)
    reply(q, 1, 0, "Hello.", False)
    reply(q, 1, 1, "How can I help?", True)
    # Segment 1 arrives first, and segment 0's chunks arrive last-chunk first.
    q.add_chunk(turn=1, seq=1, chunk=0, data=audio(0xB0, 2), last=False, now=0)
    q.add_chunk(turn=1, seq=1, chunk=1, data=b"", last=True, now=0)
    q.add_chunk(turn=1, seq=0, chunk=1, data=audio(0xA1, 2), last=True, now=0)
    q.add_chunk(turn=1, seq=0, chunk=0, data=audio(0xA0, 2), last=False, now=0)
    tw = Twilio()
    run(q, tw, 0, 1.0)
    assert tw.order() == ["a0", "a0", "a1", "a1", "mark 1:0", "b0", "b0", "mark 1:1"]


def test_mark_echo_reports_the_segment_heard_in_full() -> None:
    q = PlaybackQueue(lead_s=0.2)
    reply(q, 3, 0, "Your table is booked.", True)
    q.add_chunk(turn=3, seq=0, chunk=0, data=audio(0xA0, 3), last=True, now=0)
    run(q, Twilio(), 0, 0.5)
    heard = q.on_mark("3:0")
    assert heard is not None
    assert (heard.turn, heard.seq, heard.text, heard.complete) == (
        3,
        0,
        "Your table is booked.",
        True,
    )
    assert q.on_mark("3:0") is None  # echoed twice: reported once
    assert q.turn_played(3)


def test_missing_segment_is_skipped_after_timeout_and_never_stalls_later_audio() -> None:
    q = PlaybackQueue(lead_s=0.2, segment_timeout_s=1.0)
    reply(q, 1, 0, "First.", False)
    reply(q, 1, 1, "Second, lost by TTS.", False)
    reply(q, 1, 2, "Third.", True)
    q.add_chunk(turn=1, seq=0, chunk=0, data=audio(0xA0, 1), last=True, now=0)
    q.add_chunk(turn=1, seq=2, chunk=0, data=audio(0xC0, 1), last=True, now=0)
    tw = Twilio()
    run(q, tw, 0, 0.9)
    assert tw.order() == ["a0", "mark 1:0"]  # still waiting for seq 1
    run(q, tw, 0.9, 1.5)
    assert tw.order() == ["a0", "mark 1:0", "c0", "mark 1:2"]
    skipped = [a for _, a in tw.sent if isinstance(a, Skipped)]
    assert [(s.turn, s.seq) for s in skipped] == [(1, 1)]
    # The lost segment turning up late is not played out of order.
    assert not q.add_chunk(turn=1, seq=1, chunk=0, data=audio(0xB0, 1), last=True, now=1.6)


def test_turn_abandoned_without_last_segment_does_not_hold_up_the_next_turn() -> None:
    q = PlaybackQueue(lead_s=0.2, segment_timeout_s=5.0, abandon_grace_s=0.3)
    reply(q, 1, 0, "Let me check.", False)
    q.add_chunk(turn=1, seq=0, chunk=0, data=audio(0xA0, 1), last=True, now=0)
    tw = Twilio()
    run(q, tw, 0, 2.0)  # the agent may still be thinking: nothing skipped, nothing waits
    assert tw.order() == ["a0", "mark 1:0"]
    q.add_chunk(turn=2, seq=0, chunk=0, data=audio(0xB0, 1), last=True, now=2.0)
    run(q, tw, 2.0, 2.5)
    assert tw.order()[-2:] == ["b0", "mark 2:0"]


def test_nothing_waits_when_no_later_audio_exists() -> None:
    q = PlaybackQueue(lead_s=0.2, segment_timeout_s=0.5)
    reply(q, 1, 0, "Slow sentence.", True)
    tw = Twilio()
    run(q, tw, 0, 3.0)  # TTS is slow; the segment still plays when it comes
    q.add_chunk(turn=1, seq=0, chunk=0, data=audio(0xA0, 1), last=True, now=3.0)
    run(q, tw, 3.0, 3.5)
    assert tw.order() == ["a0", "mark 1:0"]


def test_pacing_never_more_than_lead_ahead_and_steady_without_gaps() -> None:
    lead = 0.2
    q = PlaybackQueue(lead_s=lead)
    reply(q, 1, 0, "A long sentence.", True)
    # Two seconds of audio arrive at once, in TTS-sized (1024-byte) chunks.
    data = audio(0x55, 100)
    chunks = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    for i, c in enumerate(chunks):
        q.add_chunk(turn=1, seq=0, chunk=i, data=c, last=i == len(chunks) - 1, now=0)
    tw = Twilio()
    run(q, tw, 0, 3.0)
    frames = [(t, a) for t, a in tw.sent if isinstance(a, SendMedia)]
    assert b"".join(a.data for _, a in frames) == data
    sent_s = 0.0
    for t, a in frames:
        sent_s += len(a.data) / 8000
        assert sent_s - t <= lead + 1e-6, "more than the lead ahead of real time"
    # After the lead is filled, one 20 ms frame goes out every 20 ms (1 ms poll resolution).
    times = [t for t, _ in frames[11:]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 0.0215 and min(gaps) >= 0.0185
    assert all(len(a.data) == FRAME for _, a in frames)


def test_first_audio_reported_once_per_turn_with_speech_end() -> None:
    q = PlaybackQueue(lead_s=0.2)
    q.add_reply(turn=4, seq=0, text="Hi.", last=False, speech_ended_at=123.0, now=0)
    q.add_reply(turn=4, seq=1, text="There.", last=True, speech_ended_at=123.0, now=0)
    q.add_chunk(turn=4, seq=0, chunk=0, data=audio(1, 1), last=True, now=0)
    q.add_chunk(turn=4, seq=1, chunk=0, data=audio(2, 1), last=True, now=0)
    tw = Twilio()
    run(q, tw, 0, 0.5)
    firsts = [a for _, a in tw.sent if isinstance(a, FirstAudio)]
    assert firsts == [FirstAudio(4, 0, 123.0)]


def test_barge_in_reports_heard_prefix_drops_queued_and_late_audio() -> None:
    q = PlaybackQueue(lead_s=0.2)
    text = "one two three four five six seven eight nine ten"
    reply(q, 2, 0, text, False)
    reply(q, 2, 1, "Never heard.", True)
    q.add_chunk(turn=2, seq=0, chunk=0, data=audio(0xA0, 100), last=True, now=0)  # 2 s
    q.add_chunk(turn=2, seq=1, chunk=0, data=audio(0xB0, 50), last=True, now=0)
    tw = Twilio()
    now = run(q, tw, 0, 1.0)  # about half of segment 0 has played
    assert q.is_playing(now) and q.playing_turn(now) == 2
    result = q.interrupt(2, now)
    assert result.clear
    assert len(result.heard) == 1
    heard = result.heard[0]
    assert (heard.turn, heard.seq, heard.complete) == (2, 0, False)
    assert text.startswith(heard.text) and 15 <= len(heard.text) <= 30
    assert heard.text == heard.text.strip() and heard.text.split()[-1] in text.split()
    sent_before = len(tw.sent)
    run(q, tw, now, now + 1.0)
    assert len(tw.sent) == sent_before  # the rest of the turn is dropped
    assert not q.add_chunk(turn=2, seq=1, chunk=1, data=audio(0xB1, 1), last=True, now=now)
    assert q.on_mark("2:0") is None  # Twilio echoes cleared marks: not "played"
    assert not q.is_playing(now + 0.01)
    # The next turn plays normally.
    q.add_chunk(turn=3, seq=0, chunk=0, data=audio(0xC0, 1), last=True, now=now + 1)
    run(q, tw, now + 1, now + 1.2)
    assert tw.order()[-2:] == ["c0", "mark 3:0"]


def test_interrupt_between_segments_reports_played_ones_complete() -> None:
    q = PlaybackQueue(lead_s=0.2)
    reply(q, 1, 0, "Sure.", False)
    reply(q, 1, 1, "Let me look that up.", True)
    q.add_chunk(turn=1, seq=0, chunk=0, data=audio(0xA0, 5), last=True, now=0)
    tw = Twilio()
    now = run(q, tw, 0, 0.5)  # segment 0 played (mark not echoed yet), segment 1 not here
    result = q.interrupt(1, now)
    assert [(h.seq, h.text, h.complete) for h in result.heard] == [
        (0, "Sure.", True),
        (1, "", False),
    ]


def test_interrupt_for_a_finished_turn_changes_nothing() -> None:
    q = PlaybackQueue(lead_s=0.2)
    reply(q, 1, 0, "Done.", True)
    q.add_chunk(turn=1, seq=0, chunk=0, data=audio(0xA0, 1), last=True, now=0)
    run(q, Twilio(), 0, 0.3)
    assert q.on_mark("1:0") is not None
    result = q.interrupt(1, 0.4)
    assert not result.clear and result.heard == []


def test_heard_prefix_keeps_whole_words() -> None:
    assert heard_prefix("Hello there friend", 0.5) == "Hello"
    assert heard_prefix("Hello there friend", 0.0) == ""
    assert heard_prefix("Hello there friend", 1.0) == "Hello there friend"
    assert heard_prefix("Hello there friend", 0.62) == "Hello there"
