"""The gateway's failover decisions, on a fake clock: ASR replay start, turn and segment retries."""

from __future__ import annotations

from collections import deque
from typing import Any

from services.gateway.asr_link import REPLAY_MARGIN_MS, replay_start
from services.gateway.redelivery import SEGMENT_RETRIES, Redelivery
from shared.messages import ReplySegment, Transcript

SID = "CAfailover"


def ring(first: int, count: int) -> deque[tuple[int, bytes, str, str]]:
    # frame n has Twilio timestamp 20 * n ms
    return deque((n, b"\xff" * 160, str(n), str(20 * n)) for n in range(first, first + count))


def test_replay_skips_audio_already_transcribed() -> None:
    r = ring(100, 150)  # frames 100..249: 2000..4980 ms
    # Nothing final yet: the whole ring is replayed.
    assert replay_start(r, 249, None) == 99
    # A final that ended at 3000 ms: replay from the first frame at or after 3000 + margin.
    start = replay_start(r, 249, 3000)
    assert start + 1 == (3000 + REPLAY_MARGIN_MS) // 20
    # A final that ended after everything buffered: nothing to replay.
    assert replay_start(r, 249, 6000) == 249
    assert replay_start(deque(), 7, 10) == 7


class Clock:
    def __init__(self) -> None:
        self.done_turn = -1


def watcher(clock: Clock) -> Redelivery:
    async def event(*_: Any, **__: Any) -> None:
        return None

    return Redelivery(
        nc=None,  # type: ignore[arg-type]  # due() and the on_* hooks never touch the bus
        call_sid=SID,
        event=event,
        done_turn=lambda: clock.done_turn,
        turn_retry_s=1.0,
        segment_stall_s=1.0,
    )


def final(uid: int, text: str = "what are your hours") -> Transcript:
    return Transcript(call_sid=SID, utterance_id=uid, text=text, is_final=True)


def seg(turn: int, seq: int, *, last: bool = False, uid: int | None = 1) -> ReplySegment:
    return ReplySegment(call_sid=SID, turn=turn, seq=seq, text="Hi.", last=last, utterance_id=uid)


def test_a_turn_without_progress_is_resent_until_its_reply_completes() -> None:
    clock = Clock()
    w = watcher(clock)
    tr = final(1)
    w.on_transcript(tr, tr.to_bytes(), 0.0)
    assert w.due(0.5) == (None, None)
    assert w.due(1.0)[0] == tr.to_bytes()
    # An agent heartbeat for the utterance means someone is on it: no retry.
    w.on_heartbeat(1, 1.8)
    assert w.due(2.5)[0] is None
    w.on_heartbeat(99, 2.6)  # another utterance's heartbeat does not count
    assert w.due(2.9)[0] is not None
    # A segment is progress; the last one ends the watch.
    w.on_segment(seg(3, 0), b"s0", 3.0)
    assert w.due(3.5)[0] is None
    w.on_segment(seg(3, 1, last=True), b"s1", 3.6)
    assert w.due(10.0)[0] is None


def test_interim_empty_or_older_transcripts_are_not_turns() -> None:
    w = watcher(Clock())
    interim = Transcript(call_sid=SID, utterance_id=1, text="what", is_final=False)
    w.on_transcript(interim, b"", 0.0)
    w.on_transcript(final(2, "  "), b"", 0.0)
    assert w.due(5.0) == (None, None)
    w.on_transcript(final(3), b"t3", 0.0)
    w.on_transcript(final(2), b"t2", 0.0)  # late and older: the newer one stays watched
    assert w.due(1.0)[0] == b"t3"


def test_a_played_or_interrupted_turn_is_not_resent() -> None:
    clock = Clock()
    w = watcher(clock)
    w.on_transcript(final(1), b"t1", 0.0)
    w.on_segment(seg(4, 0), b"s0", 0.2)
    clock.done_turn = 4
    assert w.due(5.0) == (None, None)


def test_a_stalled_segment_is_resent_twice_at_most_and_a_finished_one_never() -> None:
    clock = Clock()
    w = watcher(clock)
    w.on_segment(seg(2, 0, uid=None), b"s0", 0.0)
    w.on_segment(seg(2, 1, uid=None), b"s1", 0.0)
    assert w.due(0.1) == (None, None)  # s0 becomes next in line now
    w.on_chunk(2, 0, False, 0.8)
    assert w.due(1.5)[1] is None  # audio flowing
    assert w.due(1.8)[1] == b"s0"  # stalled for 1 s
    assert w.due(2.9)[1] == b"s0"
    assert SEGMENT_RETRIES == 2
    assert w.due(4.0)[1] is None  # given up: the playback queue skips it
    # s1 is next in line from now: its own second of grace, then it is re-sent.
    assert w.due(4.5)[1] is None
    assert w.due(5.4)[1] is None
    assert w.due(5.6)[1] == b"s1"
    w.on_chunk(2, 1, True, 5.7)  # Va-Last
    assert w.due(9.0) == (None, None)


def test_the_next_segment_gets_its_grace_when_it_becomes_next() -> None:
    clock = Clock()
    w = watcher(clock)
    w.on_segment(seg(2, 0, uid=None), b"s0", 0.0)
    w.on_segment(seg(2, 1, uid=None), b"s1", 0.0)
    w.due(0.0)
    for t in (0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4, 2.7):
        w.on_chunk(2, 0, False, t)  # s0 streams for 3 s (its replica holds s1 meanwhile)
        assert w.due(t)[1] is None
    w.on_chunk(2, 0, True, 3.0)
    assert w.due(3.1)[1] is None  # s1 waited 3 s behind s0: not a stall
    assert w.due(4.2)[1] == b"s1"
