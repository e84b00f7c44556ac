"""The turn gate on virtual time: segments joined into one turn, ended by the pause it needs."""

from __future__ import annotations

from collections.abc import Sequence

from services.asr.providers.base import EndOfTurn, SpeechEvent
from services.asr.turntaking.turn_gate import Segment, TurnGate, Verdict


def _decide(segs: Sequence[Segment]) -> Verdict:
    # A stand-in decision: words ending in "for" or "is" are a fragment.
    last = segs[-1].text.rstrip(".").split()[-1].lower()
    if last in {"for", "is"}:
        return Verdict(wait_ms=2000, reason="trailing_word", complete=False)
    return Verdict(wait_ms=300, reason="complete", complete=True)


def _start(ms: int) -> SpeechEvent:
    return SpeechEvent(kind="speech_started", audio_ms=ms, speech_start_ms=ms)


def _final(text: str, start: int, end: int) -> SpeechEvent:
    return SpeechEvent(
        kind="final", audio_ms=end, text=text, speech_start_ms=start, speech_end_ms=end
    )


def _run(gate: TurnGate, script: list[tuple[int, SpeechEvent | None]], until: int) -> list[object]:
    """Feed events at positions, ticking every 20 ms up to ``until``."""
    out: list[object] = []
    events = dict(script)
    for pos in range(0, until + 1, 20):
        if pos in events and events[pos] is not None:
            ev = events[pos]
            assert ev is not None
            out.extend(gate.on_event(ev, position_ms=pos))
        out.extend(gate.tick(position_ms=pos))
    return out


def _finals(out: list[object]) -> list[tuple[str, int]]:
    return [
        (o.text, o.speech_start_ms or 0)
        for o in out
        if isinstance(o, SpeechEvent) and o.kind == "final"
    ]


def _ended(out: list[object]) -> list[EndOfTurn]:
    return [o.end_of_turn for o in out if isinstance(o, SpeechEvent) and o.end_of_turn]


def test_a_complete_answer_ends_after_the_short_wait() -> None:
    gate = TurnGate(decide=_decide, rejoin_ms=1500)
    out = _run(gate, [(0, _start(0)), (1300, _final("Yes.", 0, 1000))], until=1600)
    assert _finals(out) == [("Yes.", 0)]
    ended = _ended(out)
    assert ended and ended[0].reason == "complete" and ended[0].pause_ms == 300


def test_a_fragment_waits_and_resumed_speech_makes_one_transcript() -> None:
    gate = TurnGate(decide=_decide, rejoin_ms=1500)
    script = [
        (0, _start(0)),
        (1600, _final("My date of birth is.", 0, 1300)),  # whisper's period on a fragment
        (2500, _start(2500)),  # 1.2 s pause, then the sentence goes on
        (3900, _final("March fourth.", 2500, 3600)),
    ]
    out = _run(gate, script, until=4500)
    assert _finals(out) == [("My date of birth is. March fourth.", 0)]
    starts = [o for o in out if isinstance(o, SpeechEvent) and o.kind == "speech_started"]
    assert len(starts) == 1  # one utterance for the listener


def test_a_fragment_ends_at_the_longest_wait_and_a_late_continuation_is_joined() -> None:
    gate = TurnGate(decide=_decide, rejoin_ms=1500)
    script = [
        (0, _start(0)),
        (1100, _final("I'd like to book an appointment for", 0, 1000)),
        (3600, _start(3600)),  # 2.6 s later: the wait (2 s) ran out, within the rejoin window
        (4800, _final("Tuesday.", 3600, 4500)),
    ]
    out = _run(gate, script, until=5200)
    assert [t for t, _ in _finals(out)] == [
        "I'd like to book an appointment for",
        "I'd like to book an appointment for Tuesday.",
    ]
    ended = _ended(out)
    assert [e.continues for e in ended] == [False, True]


def test_noise_alone_ends_at_once_as_an_empty_final() -> None:
    gate = TurnGate(decide=_decide, rejoin_ms=1500)
    out = _run(gate, [(0, _start(0)), (500, _final("", 0, 300))], until=600)
    assert _finals(out) == [("", 0)]
    assert [e.reason for e in _ended(out)] == ["not_speech"]


def _ended(out: list[object]) -> list[EndOfTurn]:
    return [o.end_of_turn for o in out if isinstance(o, SpeechEvent) and o.end_of_turn]


def test_a_complete_sentence_after_the_rejoin_window_is_a_new_turn() -> None:
    gate = TurnGate(decide=_decide, rejoin_ms=1500)
    script = [
        (0, _start(0)),
        (1100, _final("Thanks.", 0, 1000)),
        (1800, _start(1800)),
        (2600, _final("Bye.", 1800, 2400)),
    ]
    out = _run(gate, script, until=3000)
    assert [t for t, _ in _finals(out)] == ["Thanks.", "Bye."]
    assert not any(e.continues for e in _ended(out))


def test_a_finished_looking_clause_is_continued_by_words_that_follow_at_once() -> None:
    """ "Can you check the insurance for member 842," reads finished and its turn ends at the
    300 ms wait; the clause goes on 150 ms later: the next turn continues it (one sentence, the
    reply to the first part withdrawn). After COMPLETE_REJOIN_MS it would be a new turn."""
    from services.asr.turntaking.turn_gate import COMPLETE_REJOIN_MS

    def run(resume_after_end_ms: int) -> list[object]:
        gate = TurnGate(decide=_decide, rejoin_ms=1500)
        start = 1000 + 300 + resume_after_end_ms
        script: list[tuple[int, SpeechEvent | None]] = [
            (0, _start(0)),
            (1100, _final("Can you check the insurance for member 842?", 0, 1000)),
            (start, _start(start)),
            (start + 900, _final("date of birth January 15, 1990.", start, start + 800)),
        ]
        return _run(gate, script, until=start + 2000)

    out = run(160)
    assert [t for t, _ in _finals(out)] == [
        "Can you check the insurance for member 842?",
        "Can you check the insurance for member 842? date of birth January 15, 1990.",
    ]
    assert [e.continues for e in _ended(out)] == [False, True]
    later = run(COMPLETE_REJOIN_MS + 40)
    assert [t for t, _ in _finals(later)][-1] == "date of birth January 15, 1990."
    assert not any(e.continues for e in _ended(later))


def test_a_turn_is_not_ended_while_the_caller_sounds_again() -> None:
    """The wait ran out, but the audio is at the caller's speech level again (a recognizer slow
    to confirm "one, two, ..."): the turn waits up to the grace, then ends."""
    from services.asr.turntaking.turn_gate import SOUNDING_GRACE_MS

    gate = TurnGate(
        decide=lambda segs: Verdict(wait_ms=300, reason="r", complete=True), rejoin_ms=0
    )
    gate.on_event(SpeechEvent(kind="speech_started", audio_ms=0, speech_start_ms=0), position_ms=0)
    gate.on_event(
        SpeechEvent(
            kind="final", audio_ms=1000, text="My number is", speech_start_ms=0, speech_end_ms=1000
        ),
        position_ms=1100,
    )
    assert gate.tick(position_ms=1300, sounding=lambda: True) == []
    assert gate.tick(position_ms=1300 + SOUNDING_GRACE_MS - 20, sounding=lambda: True) == []
    ended = gate.tick(position_ms=1300 + SOUNDING_GRACE_MS, sounding=lambda: True)
    assert [e.kind for e in ended] == ["speech_stopped", "final"]
    quiet = TurnGate(
        decide=lambda segs: Verdict(wait_ms=300, reason="r", complete=True), rejoin_ms=0
    )
    quiet.on_event(
        SpeechEvent(
            kind="final", audio_ms=1000, text="Yes.", speech_start_ms=0, speech_end_ms=1000
        ),
        position_ms=1100,
    )
    assert [e.kind for e in quiet.tick(position_ms=1300, sounding=lambda: False)][-1] == "final"


def test_call_turns_wait_for_what_the_agent_asked() -> None:
    """The ASR worker hands ``AgentAsked`` to the call's turns: an answer that does not give
    the date asked for is held past the short wait; without the question it ends there."""
    from services.asr.turntaking.end_of_turn import EndOfTurnPolicy
    from services.asr.turntaking.turns import CallTurns

    def run(expects: str | None) -> list[SpeechEvent]:
        turns = CallTurns(policy=EndOfTurnPolicy(min_wait_ms=300), rejoin_ms=0, acoustic=False)
        turns.expect(expects)  # type: ignore[arg-type]
        silence = b"\xff" * 160  # 20 ms of mu-law silence
        out = [e for _ in range(50) for e in turns.hear(silence)]  # 1 s of audio heard
        out += turns.on_event(
            SpeechEvent(
                kind="final",
                audio_ms=1000,
                text="Let me check.",
                speech_start_ms=400,
                speech_end_ms=1000,
            )
        )
        for _ in range(30):  # 600 ms of pause
            out += turns.hear(silence)
        return [e for e in out if e.kind == "final"]

    assert len(run(None)) == 1
    assert run("date") == []


def test_call_turns_hold_a_pause_that_sounds_like_the_caller_but_not_line_noise() -> None:
    """The wait ran out while the audio is back at the caller's level (a recognizer that has
    not confirmed the resumed speech yet): held; line noise 30 dB under the voice: not held."""
    import numpy as np

    from services.asr.turntaking.end_of_turn import EndOfTurnPolicy
    from services.asr.turntaking.turns import CallTurns
    from shared.audio import float_to_pcm16, pcm16_to_ulaw

    def ulaw(level: float, ms: int, seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        x = (level * rng.standard_normal(8 * ms)).astype(np.float32)
        return pcm16_to_ulaw(float_to_pcm16(x))

    def finals_after(pause: bytes) -> int:
        turns = CallTurns(policy=EndOfTurnPolicy(min_wait_ms=300), rejoin_ms=0, acoustic=False)
        voice = ulaw(0.1, 1000, seed=1)  # ~-20 dBFS for 1 s
        out = [e for i in range(0, len(voice), 160) for e in turns.hear(voice[i : i + 160])]
        out += turns.on_event(
            SpeechEvent(
                kind="final", audio_ms=1000, text="Yes.", speech_start_ms=0, speech_end_ms=1000
            )
        )
        for i in range(0, len(pause), 160):
            out += turns.hear(pause[i : i + 160])
        return sum(e.kind == "final" for e in out)

    # 400 ms: past the 300 ms wait, within its grace
    assert finals_after(ulaw(0.003, 400, seed=2)) == 1  # line noise ~-50 dBFS
    assert finals_after(ulaw(0.0, 100, seed=0) + ulaw(0.1, 300, seed=3)) == 0  # the voice again


def test_a_wordless_sound_inside_a_held_fragment_does_not_hang_the_turn() -> None:
    """ "My date of birth is ... um" with the "um" heard as no words, then silence: the turn
    still ends (after the fragment's wait, counted from the "um"), it does not wait for ever."""
    gate = TurnGate(decide=_decide, rejoin_ms=1500)
    script: list[tuple[int, SpeechEvent | None]] = [
        (0, _start(0)),
        (1300, _final("My date of birth is", 0, 1000)),
        (1500, _start(1500)),
        (2100, SpeechEvent(kind="final", audio_ms=1800, text="", speech_end_ms=1800)),
    ]
    out = _run(gate, script, until=6000)
    assert _finals(out) == [("My date of birth is", 0)]
    ended = _ended(out)
    assert ended and ended[0].reason == "trailing_word"
    assert ended[0].pause_ms == 1800 - 1000 + 2000  # 2 s after the "um", not after the words
    # ...and speech within the wait after the "um" still joins the same turn
    gate = TurnGate(decide=_decide, rejoin_ms=1500)
    script += [(3000, _start(3000)), (3900, _final("March fourth.", 3000, 3600))]
    assert _finals(_run(gate, script, until=6000)) == [("My date of birth is March fourth.", 0)]


def test_call_turns_hold_a_pause_whose_resumed_voice_dips_between_words() -> None:
    """The wait runs out in a dip between resumed words ("one, | two"): the voice of the last
    200 ms still holds it; the same dip after line noise does not."""
    import numpy as np

    from services.asr.turntaking.end_of_turn import EndOfTurnPolicy
    from services.asr.turntaking.turns import CallTurns
    from shared.audio import float_to_pcm16, pcm16_to_ulaw

    def ulaw(level: float, ms: int, seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        x = (level * rng.standard_normal(8 * ms)).astype(np.float32)
        return pcm16_to_ulaw(float_to_pcm16(x))

    def finals_after(pause: bytes) -> int:
        turns = CallTurns(policy=EndOfTurnPolicy(min_wait_ms=300), rejoin_ms=0, acoustic=False)
        voice = ulaw(0.1, 1000, seed=1)
        out = [e for i in range(0, len(voice), 160) for e in turns.hear(voice[i : i + 160])]
        out += turns.on_event(
            SpeechEvent(
                kind="final", audio_ms=1000, text="Yes.", speech_start_ms=0, speech_end_ms=1000
            )
        )
        for i in range(0, len(pause), 160):
            out += turns.hear(pause[i : i + 160])
        return sum(e.kind == "final" for e in out)

    silent = ulaw(0.0, 150, seed=0)
    dip = ulaw(0.0, 70, seed=0)  # the wait (300 ms) runs out here, 70 ms into the dip
    assert finals_after(silent + ulaw(0.1, 80, seed=3) + dip) == 0
    assert finals_after(silent + ulaw(0.003, 80, seed=3) + dip) == 1
