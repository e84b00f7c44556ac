"""Gateway turn-taking logic on a fake clock: backchannels, confirm/revert, pause/resume of the
playback queue, silence and call-length guards, pacing measurement."""

from __future__ import annotations

from services.gateway.pacing import pacing_stats
from services.gateway.playback import PlaybackQueue, SendMark, SendMedia
from services.gateway.turntaking.barge_in import BargeInArbiter, BargeInPolicy, Decision
from services.gateway.turntaking.call_guards import AskPrompt, CallGuards, EndCall
from shared.backchannel import content_words, parse_backchannels
from shared.settings import Settings

BACK = parse_backchannels(Settings(_env_file=None).backchannel_words)


def test_backchannels_in_any_spelling_are_not_words() -> None:
    # "Oh.": how whisper tiny writes some "uh-huh"s
    for text in ("Mm-hmm.", "mhm", "Uh huh", "uh-huh, okay", "Yeah, right.", "OK", "I see.", "Oh."):
        assert content_words(text, BACK) == 0, text
    assert content_words("Wait.", BACK) == 1
    assert content_words("Oh no, not Tuesday.", BACK) == 3
    assert content_words("Okay, but what about Sunday?", BACK) == 4
    assert content_words("", BACK) == 0


def arbiter(**kw: object) -> BargeInArbiter:
    policy = BargeInPolicy(
        min_words=1, confirm_speech_ms=1500, timeout_s=1.2, backchannels=BACK, **kw
    )  # type: ignore[arg-type]
    return BargeInArbiter(policy=policy)


def test_words_confirm_backchannel_and_empty_revert() -> None:
    a = arbiter()
    a.pause(3, 10.0, speech_ms=160)
    assert a.on_transcript(utterance_id=1, text="Mm-hmm.", is_final=False) is Decision.WAIT
    assert a.on_transcript(utterance_id=1, text="Mm-hmm.", is_final=True) is Decision.REVERT
    a.done()
    a.pause(4, 20.0, speech_ms=160)
    assert a.on_transcript(utterance_id=2, text="", is_final=True) is Decision.REVERT
    a.done()
    a.pause(5, 30.0, speech_ms=160)
    assert a.on_transcript(utterance_id=3, text="No, stop", is_final=False) is Decision.CONFIRM


def test_old_utterance_text_does_not_decide() -> None:
    a = arbiter()
    a.on_transcript(utterance_id=7, text="What are your hours?", is_final=True)
    a.pause(1, 5.0, speech_ms=160)
    assert a.on_transcript(utterance_id=7, text="What are your hours?", is_final=True) is (
        Decision.WAIT
    )


def test_a_slow_recognizers_text_of_earlier_speech_does_not_decide() -> None:
    a = arbiter()
    a.on_speech_started(5, 1.0)  # said long before the agent spoke
    a.pause(2, 6.0, speech_ms=160)
    assert a.on_transcript(utterance_id=5, text="Thank you.", is_final=True) is Decision.WAIT
    a.done()
    assert not a.interrupts_playback(utterance_id=6, text="Thank you.", playing_since=6.0)
    a.on_speech_started(7, 8.0)
    assert a.interrupts_playback(utterance_id=7, text="Hold on", playing_since=6.0)
    assert not a.interrupts_playback(utterance_id=7, text="Yeah.", playing_since=6.0)


def test_long_speech_confirms_and_silence_reverts_after_the_window() -> None:
    a = arbiter()
    a.pause(1, 0.0, speech_ms=160)
    assert a.on_vad(speech_ms=1000, speaking=True, now=1.0) is Decision.WAIT
    assert a.on_vad(speech_ms=400, speaking=True, now=1.4) is Decision.CONFIRM
    a.done()
    a.pause(2, 10.0, speech_ms=160)
    a.on_vad(speech_ms=200, speaking=True, now=10.3)
    assert a.tick(11.4) is Decision.WAIT  # 1.1 s after the caller stopped
    assert a.tick(11.6) is Decision.REVERT


def test_a_started_utterance_gets_time_for_its_text() -> None:
    a = arbiter()
    a.on_speech_started(4, 9.9)
    a.pause(1, 10.0, speech_ms=160)
    assert a.tick(11.5) is Decision.WAIT  # the recognizer is still working on utterance 4
    assert a.on_transcript(utterance_id=4, text="Stop please", is_final=True) is Decision.CONFIRM


def test_pause_rewinds_to_the_unheard_audio_and_resume_replays_it() -> None:
    from services.gateway.playback import PlaybackQueue

    q = PlaybackQueue(lead_s=0.2)
    audio = bytes(range(250)) * 16  # 4000 bytes: 0.5 s, all sent (and marked) by 0.3 s
    q.add_reply(turn=1, seq=0, text="one two three four", last=True, speech_ended_at=None, now=0)
    q.add_chunk(turn=1, seq=0, chunk=0, data=audio, last=True, now=0)
    sent = bytearray()
    t = 0.0
    while t < 0.4:  # 0.4 s of real time: 0.4 s played, 0.1 s more queued at Twilio
        actions, _ = q.poll(t)
        sent += b"".join(a.data for a in actions if isinstance(a, SendMedia))
        t += 0.02
    assert q.pause(0.4) == 1 and q.paused
    assert q.poll(0.5) == ([], None)  # paused: nothing goes out
    q.resume(1.0)
    again = bytearray()
    marks: list[str] = []
    t = 1.0
    while t < 2.0:
        actions, _ = q.poll(t)
        again += b"".join(a.data for a in actions if isinstance(a, SendMedia))
        marks += [a.name for a in actions if isinstance(a, SendMark)]
        t += 0.02
    heard = 3200  # 0.4 s were played when the pause came
    assert len(sent) == 4000
    assert again == audio[-len(again) :] and abs(len(again) - (4000 - heard)) <= 160
    assert marks == ["1:0"]
    # Twilio echoes the voided mark on clear (ignored), then the real one.
    assert q.on_mark("1:0") is None
    heard_msg = q.on_mark("1:0")
    assert heard_msg is not None and heard_msg.complete


def test_interrupt_after_pause_reports_the_heard_prefix() -> None:
    from services.gateway.playback import PlaybackQueue

    q = PlaybackQueue(lead_s=0.2)
    q.add_reply(
        turn=2, seq=0, text="alpha beta gamma delta", last=False, speech_ended_at=None, now=0
    )
    q.add_chunk(turn=2, seq=0, chunk=0, data=b"\x01" * 8000, last=True, now=0)
    t = 0.0
    while t < 0.5:
        q.poll(t)
        t += 0.02
    q.pause(0.5)
    result = q.interrupt(2, 0.6)
    assert not result.clear  # already cleared by the pause
    [heard] = result.heard
    assert not heard.complete and heard.text == "alpha beta"
    q.add_chunk(turn=2, seq=1, chunk=0, data=b"\x02" * 800, last=True, now=0.7)
    assert q.poll(0.8) == ([], None)  # late audio of the interrupted turn never plays


def guards() -> CallGuards:
    return CallGuards(started=0.0, silence_s=8.0, hangup_s=10.0, max_call_s=900, limit_grace_s=20)


def test_silence_reprompts_then_says_goodbye_then_hangs_up() -> None:
    g = guards()
    assert g.tick(7.9, agent_busy=False) == []
    assert g.tick(8.0, agent_busy=False) == [AskPrompt("silence", 8.0)]
    assert g.tick(10.0, agent_busy=True) == []  # the reprompt plays
    assert g.tick(17.9, agent_busy=False) == []
    assert g.tick(18.0, agent_busy=False) == [AskPrompt("silence_final", 8.0)]
    assert g.tick(27.9, agent_busy=False) == []
    assert g.tick(28.0, agent_busy=False) == [EndCall("silence")]


def test_caller_speech_resets_the_silence_count() -> None:
    g = guards()
    g.tick(8.0, agent_busy=False)
    g.caller_activity(12.0)
    assert g.tick(19.9, agent_busy=False) == []
    assert g.tick(20.0, agent_busy=False) == [AskPrompt("silence", 8.0)]


def test_call_limit_prompts_then_ends_after_grace() -> None:
    g = guards()
    assert g.tick(900.0, agent_busy=True) == [AskPrompt("call_limit")]
    assert g.tick(919.0, agent_busy=True) == []
    assert g.tick(920.0, agent_busy=True) == [EndCall("call_limit")]


def test_pacing_stats_flags_bursts_gaps_and_lead() -> None:
    steady = [0.0, 0.0, 0.0, 0.0, 0.0] + [0.02 * k for k in range(1, 100)]
    ok = pacing_stats(steady)
    assert ok.within(100) and ok.underruns == 0 and ok.jitter_p95_ms < 1
    gappy = [0.02 * k for k in range(50)] + [1.5 + 0.02 * k for k in range(50)]
    bad = pacing_stats(gappy)
    assert bad.underruns == 1 and bad.max_gap_ms >= 490 and not bad.within(100)
    burst = pacing_stats([0.0] * 40)
    assert burst.max_lead_ms == 800 and not burst.within(200)


def _vad(a: BargeInArbiter, t0: float, pattern: list[tuple[bool, int]]) -> tuple[Decision, float]:
    """Feed 20 ms VAD frames (speaking, how many) from ``t0``; the first decision taken."""
    t = t0
    for speaking, frames in pattern:
        for _ in range(frames):
            t += 0.02
            d = a.on_vad(speech_ms=20 if speaking else 0, speaking=speaking, now=t)
            if d is not Decision.WAIT:
                return d, t
    return Decision.WAIT, t


def test_a_short_sound_resumes_the_agent_as_soon_as_it_stops() -> None:
    a = arbiter(short_sound_ms=600, quick_revert_ms=400)
    a.pause(3, 10.0, speech_ms=160)
    # "mm-hm": 300 ms more of sound, then silence: resumed 400 ms after it stopped, no words
    decision, at = _vad(a, 10.0, [(True, 15), (False, 40)])
    assert decision is Decision.REVERT and a.reason == "short_sound"
    assert 10.3 + 0.4 <= at <= 10.3 + 0.45


def test_a_pause_inside_an_interruption_does_not_resume_the_agent() -> None:
    a = arbiter(short_sound_ms=600, quick_revert_ms=400)
    a.pause(3, 10.0, speech_ms=160)
    # "Wait, ... stop, what about Sunday": a comma's 250 ms pause, then the caller goes on
    decision, _ = _vad(a, 10.0, [(True, 10), (False, 12), (True, 30), (False, 5)])
    assert decision is Decision.WAIT
    assert a.on_transcript(utterance_id=1, text="Wait, stop.", is_final=False) is Decision.CONFIRM


def test_an_onset_with_no_speech_releases_the_hold_before_the_lead_runs_out() -> None:
    a = arbiter(soft_pause_ms=250)
    assert a.probe(10.0) and a.holding
    assert not a.probe(10.02)  # one hold at a time
    # a thump: 60 ms of sound, no VAD speech; released once quiet for 100 ms, inside the lead
    t, decision = 10.0, Decision.WAIT
    for k in range(20):
        t += 0.02
        decision = a.on_vad(speech_ms=0, speaking=False, now=t, sounding=k < 3)
        if decision is not Decision.WAIT:
            break
    assert decision is Decision.RELEASE and a.reason == "no_speech"
    assert 10.16 - 1e-6 <= t <= 10.18 + 1e-6 and not a.holding  # 100 ms after the last loud frame
    # a sustained noise the VAD never calls speech: released after probe_ms (150), before the
    # 200 ms Twilio holds runs out (a cough costs no gap)
    assert a.probe(11.0)
    decision, at = _vad(a, 11.0, [(False, 20)])
    assert decision is Decision.RELEASE and 11.15 - 1e-6 <= at <= 11.17 + 1e-6
    # speech that the VAD is slow to see keeps the hold meanwhile
    assert a.probe(12.0)
    assert _vad(a, 12.0, [(False, 6), (True, 5)])[0] is Decision.WAIT and a.holding
    assert not arbiter().probe(10.0)  # soft pause off: nothing is held


def test_a_held_backchannel_is_released_without_a_stop() -> None:
    a = arbiter(soft_pause_ms=250, short_sound_ms=600, quick_revert_ms=400)
    assert a.probe(10.0)
    assert _vad(a, 10.0, [(True, 3)])[0] is Decision.WAIT  # speech: the hold stays
    a.pause(3, 10.06, speech_ms=160, soft=True)
    # "yeah": 80 ms more of speech (240 in all, under the soft pause), then silence
    decision, at = _vad(a, 10.06, [(True, 4), (False, 30)])
    assert decision is Decision.REVERT and a.reason == "short_sound"
    assert at <= 10.06 + 0.08 + 0.42


def test_a_held_sound_that_goes_on_is_stopped_then_confirmed() -> None:
    a = arbiter(soft_pause_ms=250, short_sound_ms=600, quick_revert_ms=400)
    a.probe(10.0)
    a.pause(3, 10.16, speech_ms=160, soft=True)
    decision, at = _vad(a, 10.16, [(True, 10)])
    assert decision is Decision.STOP and a.reason == "long_sound" and not a.soft
    assert abs(at - (10.16 + 0.1)) < 1e-6  # 160 + 100 ms of speech reached 250
    assert _vad(a, at, [(True, 2)])[0] is Decision.WAIT  # stopped once
    assert a.on_transcript(utterance_id=1, text="Sorry, wait.", is_final=False) is (
        Decision.CONFIRM
    )


def _held_queue(audio: bytes, until: float) -> tuple[PlaybackQueue, bytearray]:
    q = PlaybackQueue(lead_s=0.2)
    q.add_reply(turn=1, seq=0, text="one two three", last=True, speech_ended_at=None, now=0)
    q.add_chunk(turn=1, seq=0, chunk=0, data=audio, last=True, now=0)
    sent = bytearray()
    t = 0.0
    while t < until - 1e-9:
        actions, _ = q.poll(t)
        sent += b"".join(a.data for a in actions if isinstance(a, SendMedia))
        t += 0.02
    return q, sent


def _drain(q: PlaybackQueue, t: float, until: float) -> bytearray:
    out = bytearray()
    while t < until:
        actions, _ = q.poll(t)
        out += b"".join(a.data for a in actions if isinstance(a, SendMedia))
        t += 0.02
    return out


def test_hold_sends_nothing_new_and_resume_goes_on_from_the_next_frame() -> None:
    audio = bytes(range(256)) * 40  # 1.28 s, every frame different
    q, sent = _held_queue(audio, 0.4)
    hold = q.hold(0.4)
    assert hold is not None and hold.turn == 1 and q.held and not q.drained
    assert q.poll(0.5) == ([], None)  # held: nothing goes out, Twilio plays its lead
    assert q.is_playing(0.5)  # still this turn's: the silence guard is not fooled
    q.resume(0.7)
    after = _drain(q, 0.7, 2.0)
    assert bytes(sent + after) == audio  # no frame twice, none lost


def test_pause_after_the_hold_drained_rewinds_nothing() -> None:
    audio = bytes(range(256)) * 40
    q, sent = _held_queue(audio, 0.4)
    hold = q.hold(0.4)
    assert hold is not None
    assert q.on_mark(hold.mark) is None and q.drained  # Twilio played all it had
    assert q.pause(0.45) == 1  # a clock that says otherwise is not believed
    q.resume(0.9)
    after = _drain(q, 0.9, 2.2)
    assert bytes(sent + after) == audio


def test_speech_soon_after_a_quick_revert_waits_for_its_words() -> None:
    a = arbiter(short_sound_ms=600, quick_revert_ms=400)
    a.pause(3, 10.0, speech_ms=160)
    a.on_speech_started(1, 10.25)  # the recognizer heard the utterance begin
    # A slow "Sorry," 400 ms more, then a long comma: quick-reverted...
    decision, at = _vad(a, 10.0, [(True, 20), (False, 25)])
    assert decision is Decision.REVERT
    a.done()
    # ..."wait" 0.6 s later is the same sound going on: no second quick revert
    a.pause(3, at + 0.6, speech_ms=160)
    assert _vad(a, at + 0.6, [(True, 10), (False, 30)])[0] is Decision.WAIT
    # its final names the utterance that began before the first pause, over 1 s before this
    # one: the same sound, so its words still decide
    assert a.on_transcript(utterance_id=1, text="Sorry, wait.", is_final=True) is (Decision.CONFIRM)
    a.done()
    # a new sound well after it is judged afresh
    a.pause(4, 20.0, speech_ms=160)
    assert _vad(a, 20.0, [(True, 10), (False, 25)])[0] is Decision.REVERT


def test_a_backchannel_interim_after_the_sound_resumes_before_the_quick_revert() -> None:
    a = arbiter(soft_pause_ms=250, short_sound_ms=600, quick_revert_ms=400)
    a.pause(3, 10.0, speech_ms=160, soft=True)
    decision, at = _vad(a, 10.0, [(True, 4), (False, 6)])  # "mm-hm", then 120 ms quiet
    assert decision is Decision.WAIT
    # the recognizer's interim from its first pause: only a backchannel, the caller is quiet
    d = a.on_transcript(utterance_id=1, text="Mm-hmm.", is_final=False, now=at)
    assert d is Decision.REVERT and a.reason == "backchannel"
    assert at - 10.08 < 0.4  # sooner than the quick revert's 400 ms of silence
    a.done()
    # no words yet (whisper declined the first part of "Sorry, ... wait"): the quick revert or
    # the final decides, not an empty interim
    a.pause(7, 15.0, speech_ms=160, soft=True)
    _, at = _vad(a, 15.0, [(True, 4), (False, 6)])
    assert a.on_transcript(utterance_id=5, text="", is_final=False, now=at) is Decision.WAIT
    a.done()
    # an interim while the caller still speaks ("Yeah, ... but") does not revert
    a.pause(4, 20.0, speech_ms=160, soft=True)
    _, at = _vad(a, 20.0, [(True, 4)])
    assert a.on_transcript(utterance_id=2, text="Yeah.", is_final=False, now=at) is Decision.WAIT
    a.done()
    # words that interrupt are confirmed by their interim, whatever the pause
    a.pause(5, 30.0, speech_ms=160, soft=True)
    _, at = _vad(a, 30.0, [(True, 4), (False, 6)])
    assert a.on_transcript(utterance_id=3, text="No.", is_final=False, now=at) is (Decision.CONFIRM)
    a.done()
    # a sound that outlasted the short-sound limit waits for its final
    a.pause(6, 40.0, speech_ms=160)
    _, at = _vad(a, 40.0, [(True, 30), (False, 6)])
    assert a.on_transcript(utterance_id=4, text="Okay.", is_final=False, now=at) is (Decision.WAIT)
