"""Smart endpointing's decision logic without models: completeness and the turn state machine."""

from __future__ import annotations

from services.asr.segmenter import Boundary, ms_to_samples
from services.asr.turntaking.smart_endpointing import (
    Begin,
    Drop,
    EndTurn,
    Interim,
    Speculate,
    TurnEnder,
    looks_complete,
)


def test_complete_sentences_and_unfinished_ones() -> None:
    for text in ("What time do you close today?", "Yes, that works for me.", "My name is John."):
        assert looks_complete(text), text
    for text in (
        "I'd like to book an appointment for.",  # whisper's period after a trailing preposition
        "My name is",
        "I need to move it because...",
        "I want to cancel and",
        "So, um.",
        "Next Tuesday,",
        "",
    ):
        assert not looks_complete(text), text


def ms(n: int) -> int:
    return ms_to_samples(n)


def test_complete_words_end_the_turn_as_soon_as_the_decode_is_back() -> None:
    t = TurnEnder(max_ms=1500)
    assert t.boundary(Boundary("start", ms(100), ms(300))) == [Begin(ms(100))]
    assert t.boundary(Boundary("stop", ms(100), ms(1500))) == [Speculate(1, ms(100), ms(1500))]
    assert t.tick(ms(1900), onset_pending=False) == []  # decode not back yet
    # The caller may be starting again: wait for the VAD to decide.
    got = t.decoded(1, ("Yes, please.", 0.9), onset_pending=True)
    assert got == [Interim("Yes, please.", ms(100), ms(1500))]
    assert t.tick(ms(2000), onset_pending=False) == [EndTurn(ms(100), ms(1500), 1)]


def test_unfinished_words_wait_and_merge_with_the_rest_of_the_sentence() -> None:
    t = TurnEnder(max_ms=1500)
    t.boundary(Boundary("start", 0, ms(200)))
    t.boundary(Boundary("stop", 0, ms(2000)))
    words = ("I'd like to book an appointment for.", 0.8)
    assert t.decoded(1, words, onset_pending=False) == [Interim(words[0], 0, ms(2000))]
    assert t.tick(ms(3000), onset_pending=False) == []
    # Speech again within the maximum: the same utterance, the stale decode dropped.
    assert t.boundary(Boundary("start", ms(2700), ms(2900))) == [Drop(1)]
    assert t.boundary(Boundary("stop", 0, ms(4000))) == [Speculate(2, 0, ms(4000))]
    assert t.decoded(1, words, onset_pending=False) == [], "a stale decode changes nothing"
    assert t.decoded(2, ("... for next Tuesday. And", 0.8), onset_pending=False)[0] == Interim(
        "... for next Tuesday. And", 0, ms(4000)
    )
    assert t.tick(ms(5400), onset_pending=False) == []
    assert t.tick(ms(5500), onset_pending=False) == [EndTurn(0, ms(4000), 2)]  # the maximum


def test_not_speech_ends_at_once_and_decodes_are_bounded() -> None:
    t = TurnEnder(max_ms=1500, max_speculations=1)
    t.boundary(Boundary("start", 0, ms(200)))
    t.boundary(Boundary("stop", 0, ms(500)))
    assert t.decoded(1, None, onset_pending=False) == [EndTurn(0, ms(500), 1)]
    t.boundary(Boundary("start", ms(1000), ms(1200)))
    assert t.boundary(Boundary("stop", ms(1000), ms(1500))) == [Speculate(2, ms(1000), ms(1500))]
    t.boundary(Boundary("start", ms(1700), ms(1900)))
    # The budget is spent: this pause is not decoded; the maximum decodes the whole turn once.
    assert t.boundary(Boundary("stop", ms(1000), ms(2500))) == []
    assert t.tick(ms(4000), onset_pending=False) == [EndTurn(ms(1000), ms(2500), None)]
    assert t.flush() == []


def test_forced_stop_ends_the_turn_without_waiting() -> None:
    t = TurnEnder(max_ms=1500)
    t.boundary(Boundary("start", 0, ms(200)))
    assert t.boundary(Boundary("stop", 0, ms(25_000), forced=True)) == [
        EndTurn(0, ms(25_000), None)
    ]
