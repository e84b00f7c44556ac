"""ASR bookkeeping without models: endpointing, whisper output filtering, utterance ids,
audio clocks and frame headers."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import numpy as np
import pytest

from services.asr.intake import FrameQueue, frame_meta
from services.asr.segmenter import Boundary, Endpointer, SampleBuffer
from services.asr.transcript_filter import accept_transcript
from services.asr.utterances import AudioClock, UtteranceTracker
from shared import headers as H

WIN_MS = 32  # one Silero window at 8 kHz


def run(ep: Endpointer, probs: list[float]) -> list[Boundary]:
    out = [ep.push(p) for p in probs]
    return [b for b in out if b is not None]


def endpointer(**kw: int | float) -> Endpointer:
    args: dict[str, int | float] = {"threshold": 0.5, "min_speech_ms": 200, "endpointing_ms": 600}
    args.update(kw)
    return Endpointer(**args)  # type: ignore[arg-type]


def test_speech_shorter_than_min_speech_is_ignored() -> None:
    ep = endpointer()
    # 6 windows = 192 ms of speech, then silence: a click, not a caller.
    assert run(ep, [0.0] * 10 + [0.9] * 6 + [0.0] * 40) == []


def test_onset_is_timestamped_at_the_first_speech_window() -> None:
    ep = endpointer()
    bounds = run(ep, [0.0] * 10 + [0.9] * 7)
    assert bounds == [Boundary(kind="start", start=10 * 256, end=17 * 256)]


def test_a_short_dip_during_onset_does_not_reset_it() -> None:
    ep = endpointer()
    bounds = run(ep, [0.0] * 10 + [0.9] * 3 + [0.1] * 2 + [0.9] * 4)
    assert [b.kind for b in bounds] == ["start"]
    assert bounds[0].start == 10 * 256


def test_end_after_endpointing_silence_at_the_last_speech_window() -> None:
    ep = endpointer()
    probs = [0.0] * 5 + [0.9] * 30 + [0.0] * 30
    bounds = run(ep, probs)
    assert [b.kind for b in bounds] == ["start", "stop"]
    stop = bounds[1]
    assert (stop.start, stop.end, stop.forced) == (5 * 256, 35 * 256, False)
    # Decided after ceil(600 / 32) = 19 silent windows, not before.
    ep2 = endpointer()
    assert [b.kind for b in run(ep2, [0.0] * 5 + [0.9] * 30 + [0.0] * 18)] == ["start"]
    assert ep2.push(0.0) == Boundary(kind="stop", start=5 * 256, end=35 * 256)


def test_a_pause_is_reported_early_with_the_span_the_stop_will_have() -> None:
    ep = endpointer(endpointing_ms=300, early_ms=100)
    # 4 silent windows (128 ms) reach the early-decode time: the span so far, once per pause.
    bounds = run(ep, [0.0] * 5 + [0.9] * 30 + [0.0] * 4)
    assert bounds[-1] == Boundary(kind="pause", start=5 * 256, end=35 * 256)
    bounds = run(ep, [0.0] * 6)
    assert [b.kind for b in bounds] == ["stop"]
    assert (bounds[0].start, bounds[0].end) == (5 * 256, 35 * 256)


def test_speech_resuming_after_an_early_pause_reports_the_next_pause_anew() -> None:
    ep = endpointer(endpointing_ms=300, early_ms=100)
    probs = [0.9] * 10 + [0.0] * 5 + [0.9] * 10 + [0.0] * 10
    kinds = [(b.kind, b.end) for b in run(ep, probs)]
    assert kinds == [
        ("start", 7 * 256),
        ("pause", 10 * 256),
        ("pause", 25 * 256),
        ("stop", 25 * 256),
    ]


def test_no_early_pause_unless_asked_or_when_not_before_the_stop() -> None:
    probs = [0.9] * 10 + [0.0] * 30
    assert [b.kind for b in run(endpointer(), probs)] == ["start", "stop"]
    late = endpointer(endpointing_ms=300, early_ms=300)
    assert [b.kind for b in run(late, probs)] == ["start", "stop"]


def test_hysteresis_keeps_speech_between_the_two_thresholds() -> None:
    ep = endpointer()
    # 0.4 is under the onset threshold but above threshold - 0.15: still speech.
    bounds = run(ep, [0.9] * 10 + [0.4] * 40)
    assert [b.kind for b in bounds] == ["start"]
    assert ep.in_speech


def test_long_monologues_are_cut_for_whisper() -> None:
    ep = endpointer(max_utterance_ms=2000)
    bounds = run(ep, [0.9] * 70)
    assert [b.kind for b in bounds][:3] == ["start", "stop", "start"]
    assert bounds[1].forced


def test_flush_closes_the_utterance_in_progress() -> None:
    ep = endpointer()
    run(ep, [0.9] * 10)
    b = ep.flush()
    assert b is not None and b.kind == "stop" and b.forced and b.end == 10 * 256
    assert endpointer().flush() is None


def test_sample_buffer_keeps_only_what_is_needed() -> None:
    buf = SampleBuffer()
    for i in range(10):
        buf.append(np.full(160, i, dtype=np.float32))
    buf.trim(800)  # chunks 0..4 end at or before 800
    assert buf.end == 1600
    assert buf.slice(0, 1600)[0] == 5.0
    got = buf.slice(950, 1130)
    assert len(got) == 180 and got[0] == 5.0 and got[-1] == 7.0


@dataclass
class Seg:
    text: str
    avg_logprob: float = -0.2
    no_speech_prob: float = 0.05
    compression_ratio: float = 1.2


def test_confident_words_are_kept() -> None:
    result = accept_transcript([Seg(" I need a refill."), Seg(" Thanks.")])
    assert result is not None
    text, confidence = result
    assert text == "I need a refill. Thanks."
    assert 0.8 < confidence <= 1.0


@pytest.mark.parametrize(
    "segments",
    [
        [],
        [Seg(" ")],
        [Seg(" [BLANK_AUDIO]")],
        [Seg(" (music)")],
        # Stock phrases as whisper invents them on background talk (measured, docs/robustness.md)
        [Seg(" Thank you.", avg_logprob=math.log(0.58), no_speech_prob=0.73)],
        [Seg(" Thank you very much.", avg_logprob=math.log(0.56), no_speech_prob=0.55)],
        [Seg(" Thank you.", avg_logprob=math.log(0.38), no_speech_prob=0.63)],
        # Never seen on noise, but past the bar: more likely silence than a caller's "Okay."
        [Seg(" Okay.", avg_logprob=math.log(0.55), no_speech_prob=0.58)],
        [Seg(" you", no_speech_prob=0.4)],
        [Seg(" Hello there.", no_speech_prob=0.8)],
        [Seg(" Hello there.", avg_logprob=-1.4)],
        [Seg(" the the the the the", compression_ratio=3.1)],
    ],
)
def test_what_whisper_invents_on_noise_is_dropped(segments: list[Seg]) -> None:
    assert accept_transcript(segments) is None


@pytest.mark.parametrize(
    ("text", "confidence", "no_speech"),
    [  # callers' short answers as whisper decoded them (measured, docs/robustness.md)
        (" Thank you.", 0.89, 0.39),
        (" Thanks.", 0.70, 0.42),
        (" Okay.", 0.49, 0.39),
        (" Okay.", 0.51, 0.48),
        (" Bye!", 0.66, 0.29),
        (" Thank you.", 0.95, 0.05),
    ],
)
def test_a_caller_s_stock_answer_is_kept(text: str, confidence: float, no_speech: float) -> None:
    seg = Seg(text, avg_logprob=math.log(confidence), no_speech_prob=no_speech)
    assert accept_transcript([seg]) is not None


def test_utterance_ids_increase_whatever_the_stop_final_order() -> None:
    t = UtteranceTracker()
    assert [t.on(k).id for k in ("speech_started", "speech_stopped", "final")] == [1, 1, 1]
    assert t.idle
    # A provider that reports the final before the stop (and no start) keeps one id too.
    assert [t.on(k).id for k in ("interim", "final", "speech_stopped")] == [2, 2, 2]
    assert t.on("speech_started").id == 3
    assert not t.idle


def test_utterance_ids_continue_after_a_failover() -> None:
    assert UtteranceTracker(last_id=41).on("speech_started").id == 42


def test_abandoned_utterance_does_not_swallow_the_next_final() -> None:
    t = UtteranceTracker()
    t.on("speech_started")
    t.abandon()
    assert t.idle
    assert t.on("final").id == 2


def test_audio_clock_maps_positions_and_wall_time() -> None:
    clock = AudioClock()
    clock.start_stream(first_ts_ms=10_000)  # re-claimed mid-call: Twilio time 10 s
    for _ in range(50):
        clock.consumed(160, wall=1000.0)
    clock.consumed(160, wall=1000.02)
    assert clock.call_ms(500) == 10_500
    assert clock.lag_ms(420) == pytest.approx(600)  # 1020 ms consumed, speech ended at 420
    assert clock.wall_at(420) == pytest.approx(1000.02 - 0.6)
    clock.start_stream(first_ts_ms=None)  # restarted without headers: continue from total
    assert clock.call_ms(0) == 1020


def test_frame_meta_reads_headers_and_ignores_a_wild_clock() -> None:
    now = time.time()
    sent = str(int((now - 0.01) * 1e9))
    seq, ts, wall = frame_meta({H.SEQ: "7", H.TS_MS: "140", H.SENT_NS: sent}, now)
    assert (seq, ts) == (7, 140) and wall == pytest.approx(now - 0.01)
    assert frame_meta({H.SENT_NS: str(int((now - 3600) * 1e9))}, now)[2] == now
    assert frame_meta(None, now) == (None, None, now)
    with pytest.raises(ValueError):
        frame_meta({H.SEQ: "x"}, now)


async def test_full_audio_queue_drops_the_oldest_frame() -> None:
    q = FrameQueue(maxsize=2)
    assert not q.put((b"a", None, 0.0))
    assert not q.put((b"b", None, 0.0))
    assert q.put((b"c", None, 0.0))
    assert [await q.get(), await q.get()] == [(b"b", None, 0.0), (b"c", None, 0.0)]


async def test_a_waiting_recognizer_wakes_for_the_next_frame() -> None:
    q = FrameQueue(maxsize=2)
    got = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not got.done()
    q.put((b"a", 20, 0.0))
    assert await asyncio.wait_for(got, 1.0) == (b"a", 20, 0.0)
    q.put(None)  # the end marker passes through
    assert await q.get() is None
