"""The end-of-turn decision on recorded feature sequences (no clock, no I/O)."""

from __future__ import annotations

from services.asr.turntaking.end_of_turn import (
    Action,
    EndOfTurnPolicy,
    Evidence,
    Word,
    decide,
    joins,
    merge,
)
from services.asr.turntaking.prosody import Finality

POLICY = EndOfTurnPolicy()


def said(text: str, pause_ms: float, *, question: str | None = None, **kw: object) -> Evidence:
    """What whisper hands over: the words, punctuated as it likes (a period after fragments)."""
    words = tuple(Word(w.strip(".,?!"), confidence=0.9) for w in text.split())
    return Evidence(words=words, text=text, pause_ms=pause_ms, agent_question=question, **kw)  # type: ignore[arg-type]


def sounds(score: float) -> Finality:
    return Finality(
        pitch_slope=None, pitch_drop=None, energy_decay=0.0, final_lengthening=1.0, score=score
    )


def test_a_finished_answer_ends_quickly() -> None:
    d = decide(said("Yes.", 200))
    assert d.action is Action.END
    assert d.wait_ms <= 350


def test_a_full_sentence_ends_at_the_short_wait() -> None:
    d = decide(said("My name is Maria Lopez.", 300, question="May I have your name?"))
    assert d.action is Action.END
    assert d.wait_ms == POLICY.min_wait_ms


def test_an_announced_date_not_said_yet_waits_despite_whisper_period() -> None:
    d = decide(said("My date of birth is.", 600, question="What is your date of birth?"))
    assert d.action is Action.WAIT
    assert d.wait_ms == POLICY.max_wait_ms
    assert "'is'" in d.reason


def test_a_trailing_preposition_waits_up_to_the_maximum() -> None:
    fragment = "I'd like to book an appointment for."
    for pause in (300, 1000, 1500, 1999):
        assert decide(said(fragment, pause)).action is Action.WAIT
    d = decide(said(fragment, 2000))
    assert d.action is Action.END  # the maximum ends anything
    assert d.wait_ms == POLICY.max_wait_ms


def test_the_maximum_is_configurable() -> None:
    d = decide(said("And so, my.", 1600), EndOfTurnPolicy(max_wait_ms=3000))
    assert (d.action, d.wait_ms) == (Action.WAIT, 3000)


def test_a_trailing_filler_waits() -> None:
    d = decide(said("I think it was, um", 700))
    assert d.action is Action.WAIT
    assert "filler" in d.reason


def test_a_date_question_answered_by_a_date_ends() -> None:
    q = "What is your date of birth?"
    assert decide(said("March fourth.", 300, question=q)).action is Action.END
    # A month alone, for a date of birth: the day is still coming.
    assert decide(said("March.", 300, question=q)).action is Action.WAIT


def test_a_question_not_answered_yet_waits() -> None:
    d = decide(said("Let me check.", 800, question="What is your date of birth?"))
    assert d.action is Action.WAIT
    assert "not answered" in d.reason


def test_a_phone_number_said_in_groups_waits_for_all_digits() -> None:
    q = "What is your phone number?"
    assert decide(said("Five five five, one two three.", 900, question=q)).action is Action.WAIT
    full = "Five five five, one two three, four five six seven."
    assert decide(said(full, 300, question=q)).action is Action.END


def test_a_year_still_being_said_waits() -> None:
    assert decide(said("March fourth, nineteen.", 600)).action is Action.WAIT


def test_elliptic_answers_and_think_so_are_finished() -> None:
    for text in ("I do.", "Yes, it is.", "I think so."):
        assert decide(said(text, 300)).action is Action.END, text
    assert decide(said("I think that.", 300)).action is Action.WAIT


def test_speech_resuming_within_the_wait_joins_the_utterance() -> None:
    first = said("I'd like to book an appointment for.", 800)
    d = decide(first)
    assert d.action is Action.WAIT
    assert joins(d, resumed_after_ms=800)
    whole = merge(first, said("Tuesday.", 250))
    assert whole.transcript == "I'd like to book an appointment for Tuesday."
    assert len(whole.words) == 8
    assert decide(whole).action is Action.END


def test_speech_after_an_ended_turn_does_not_join() -> None:
    d = decide(said("Yes.", 400))
    assert not joins(d, resumed_after_ms=400)


def test_the_caller_still_speaking_is_not_judged() -> None:
    assert decide(said("Yes", 0)).action is Action.LISTEN
    assert decide(Evidence(words=(), pause_ms=900)).action is Action.LISTEN


def test_low_confidence_words_do_not_end_quickly() -> None:
    words = (Word("book", 0.3), Word("tuesday", 0.2))
    d = decide(Evidence(words=words, text="Book Tuesday.", pause_ms=300))
    assert d.action is Action.WAIT
    assert "low confidence" in d.reason


def test_acoustics_move_an_undecided_transcript_but_never_a_strong_rule() -> None:
    # "... that" is undecided by the words: falling, fading speech ends it sooner.
    flat = decide(said("I really like that", 900, acoustic=sounds(0.0)))
    final = decide(said("I really like that", 900, acoustic=sounds(1.0)))
    assert final.wait_ms < flat.wait_ms
    # A trailing "for" waits however final it sounds.
    d = decide(said("An appointment for.", 900, acoustic=sounds(1.0)))
    assert (d.action, d.wait_ms) == (Action.WAIT, POLICY.max_wait_ms)


def test_punctuation_alone_does_not_end_a_fragment() -> None:
    # whisper's period after "my" is no evidence the caller has finished.
    assert decide(said("And so, my.", 1000)).action is Action.WAIT
    assert decide(said("My birthday is in May.", 300)).action is Action.END


def test_a_wish_without_its_object_and_digit_groups_wait_but_a_final_do_ends() -> None:
    for fragment in ("I'd like to book", "I need to cancel", "My number is five five five"):
        d = decide(Evidence(words=(), text=fragment + ".", pause_ms=600))
        assert d.wait_ms == EndOfTurnPolicy().max_wait_ms, (fragment, d.reason)
    for whole in ("Ask what you can do.", "I'd like to book an appointment.", "I do."):
        d = decide(Evidence(words=(), text=whole, pause_ms=600))
        assert d.wait_ms < 1000, (whole, d.reason)


def test_a_whole_phone_number_ends_after_its_last_group() -> None:
    for whole in ("My number is 555 1234.", "My number is five five five, one two three four."):
        d = decide(Evidence(words=(), text=whole, pause_ms=600))
        assert d.wait_ms < 1000, (whole, d.reason)


def test_a_clause_opened_with_no_verb_yet_waits() -> None:
    """ "And so, my fellow ..." ends on a noun, but the clause "and so" opened has no verb yet
    (whisper's period or mishearing of the noun does not matter)."""
    for fragment in ("And so, my fellow.", "And so my elbow.", "But the second one.", "So the"):
        d = decide(said(fragment, 400))
        assert d.action is Action.WAIT, fragment
        assert d.wait_ms >= 1500, fragment
    for finished in (
        "And so, my fellow citizens, ask what you can do.",
        "And then I called them.",
        "Because the pharmacy was closed.",
        "And you?",
        "So, Tuesday.",
        "And my daughter too.",
    ):
        assert decide(said(finished, 400)).action is Action.END, finished


def test_what_the_agent_asked_for_is_awaited_when_announced_as_a_kind() -> None:
    """``AgentAsked`` carries only the kind ("date"): "Let me check." does not answer it."""
    from dataclasses import replace

    d = decide(replace(said("Let me check.", 400), expects="date"))
    assert d.action is Action.WAIT and d.wait_ms >= 1500
    assert decide(said("Let me check.", 400)).action is Action.END
    assert decide(replace(said("March fourth.", 400), expects="date")).action is Action.END
    phone = decide(replace(said("Five five five, one two three.", 400), expects="phone"))
    assert phone.action is Action.WAIT


def test_a_filler_spelled_long_still_waits() -> None:
    """Whisper writes a held "um" as it heard it ("umm...", "uhhh", "hmmm")."""
    for text in ("My date of birth is, umm...", "It was uhhh", "Let me see, hmmm."):
        d = decide(said(text, 700))
        assert d.action is Action.WAIT, text
        assert d.wait_ms == POLICY.max_wait_ms, text
        assert "filler" in d.reason, text
    assert decide(said("Mmm.", 300)).action is Action.WAIT  # a lone "mmm" is thinking, not yes


def test_an_announced_number_with_no_digits_heard_waits() -> None:
    """ "five five five" misheard as words ("time time time"): the number is still coming."""
    d = decide(said("My number is time time time.", 600))
    assert d.action is Action.WAIT
    assert d.wait_ms > 1000
    assert "announced number" in d.reason
    assert decide(said("My phone number is.", 600)).action is Action.WAIT
    # A value heard, or a sentence about the value, ends as before.
    assert decide(said("My number is 555-123-4567.", 300)).action is Action.END
    assert decide(said("My phone number is on file.", 300)).action is Action.END
    assert decide(said("My date of birth is March fourth.", 300)).action is Action.END
    assert decide(said("My date of birth is the same.", 300)).action is Action.END


def test_an_announced_date_with_no_date_heard_waits() -> None:
    d = decide(said("My date of birth is a.m. more.", 600))
    assert d.action is Action.WAIT
    assert "announced date" in d.reason


def test_a_word_said_three_times_at_the_end_waits_like_a_digit_group() -> None:
    d = decide(said("Might have a very time time time.", 600))
    assert d.action is Action.WAIT
    assert d.wait_ms >= 1500
    assert decide(said("No, no, no.", 300)).action is Action.END  # a short answer
