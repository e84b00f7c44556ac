"""Turn-taking on the agent side, through the real worker and demo agent on a private NATS:
the gateway's silence / call-limit prompts, keypad entries, and the cached greeting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from services.agent.digits import DigitCollector, DigitRequest
from services.agent.fixed_prompts import CALL_LIMIT_GOODBYE, SILENCE_GOODBYE, STILL_THERE
from services.agent.history import History
from services.agent.providers.demo import ASK_MEMBER_ID, DemoAgent
from services.agent.store import Store
from services.agent.tools import CallTools
from services.agent.worker import AgentWorker
from shared import headers as H
from shared import subjects
from shared.bus import make_broker
from shared.messages import (
    CallStarted,
    Dtmf,
    Event,
    Hangup,
    Played,
    Prompt,
    ReplySegment,
    Transcript,
    parse_reply,
)
from shared.settings import Settings
from tests.integration.agent_bus import CallTap, connect, new_sid, private_nats_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nats_private() -> Iterator[str]:
    with private_nats_server() as url:
        yield url


@pytest.fixture
async def nc(nats_private: str) -> AsyncIterator[NATS]:
    settings = Settings(nats_url=nats_private, redis_url="")
    store = Store(url="")
    tools = CallTools(settings=settings, store=store)
    broker = make_broker(settings, name="agent-turntaking-test")
    worker = AgentWorker(
        settings=settings,
        provider=DemoAgent(settings=settings, tools=tools),
        history=History(store=store),
        broker=broker,
    )
    worker.attach()
    await broker.start()
    client = await connect(nats_private)
    try:
        yield client
    finally:
        await client.close()
        await worker.drain(timeout_s=2)
        await broker.stop()


def said(tap: CallTap, turn: int) -> str:
    return " ".join(s.text for s in tap.of(ReplySegment, turn=turn) if s.text)


def turn_over(tap: CallTap, turn: int) -> bool:
    return bool(tap.of(Event, name="agent.turn_done", turn=turn))


async def prompt(tap: CallTap, reason: str) -> None:
    await tap.send(subjects.control(tap.sid), Prompt(call_sid=tap.sid, reason=reason))  # type: ignore[arg-type]


async def test_silence_prompts_then_goodbye_and_hangup(nc: NATS) -> None:
    tap = await CallTap(nc, new_sid()).start()
    await prompt(tap, "silence")
    await tap.wait_for(lambda: turn_over(tap, 1), what="reprompt")
    assert said(tap, 1).startswith(STILL_THERE)
    first = tap.of(ReplySegment, turn=1)[0]
    assert first.text == STILL_THERE and first.cacheable, "fixed prompt audio is cached"
    assert not tap.of(Hangup)
    await prompt(tap, "silence_final")
    await tap.wait_for(lambda: bool(tap.of(Hangup)), what="hangup")
    assert said(tap, 2) == SILENCE_GOODBYE
    assert all(s.cacheable for s in tap.of(ReplySegment, turn=2) if s.text)
    hangup = tap.of(Hangup)[0]
    assert hangup.after_turn == 2 and hangup.reason == "silence"


async def test_call_limit_says_why_and_hangs_up(nc: NATS) -> None:
    tap = await CallTap(nc, new_sid()).start()
    await prompt(tap, "call_limit")
    await tap.wait_for(lambda: bool(tap.of(Hangup)), what="hangup")
    assert said(tap, 1) == CALL_LIMIT_GOODBYE and "time limit" in said(tap, 1)
    assert tap.of(Hangup)[0].after_turn == 1 and tap.of(Hangup)[0].reason == "call_limit"


async def test_greeting_segments_are_cacheable(nc: NATS) -> None:
    tap = await CallTap(nc, new_sid()).start()
    started = CallStarted(call_sid=tap.sid, stream_sid="MZ1", gateway_id="gw")
    await tap.send(subjects.control(tap.sid), started)
    await tap.wait_for(lambda: turn_over(tap, 1), what="greeting")
    segs = [s for s in tap.of(ReplySegment, turn=1) if s.text]
    assert segs and all(s.cacheable for s in segs), "the greeting plays from the TTS cache"


async def press(tap: CallTap, keys: str) -> None:
    for k in keys:
        await tap.send(subjects.control(tap.sid), Dtmf(call_sid=tap.sid, digit=k))
        await asyncio.sleep(0.05)  # a person's keypad rhythm, and one key at a time


async def test_member_id_typed_on_the_keypad_is_one_caller_input(nc: NATS) -> None:
    tap = await CallTap(nc, new_sid()).start()
    ask = Transcript(call_sid=tap.sid, utterance_id=1, text="What's my member ID?", is_final=True)
    await tap.send(subjects.transcript(tap.sid), ask)
    await tap.wait_for(lambda: turn_over(tap, 1), what="the agent asks for digits")
    assert said(tap, 1) == ASK_MEMBER_ID
    await press(tap, "123456")
    await tap.wait_for(lambda: turn_over(tap, 2), what="the entry's turn")
    await asyncio.sleep(0.3)
    assert not tap.of(Event, name="agent.turn_started", turn=3), "one turn for six keys"
    assert "member ID 1 2 3 4 5 6" in said(tap, 2)
    # Keys after the entry are menu keys again.
    await press(tap, "*")
    await tap.wait_for(lambda: turn_over(tap, 3), what="menu")
    assert said(tap, 3).startswith("Press 1 to book")


async def test_pound_ends_a_short_entry_and_the_agent_asks_again(nc: NATS) -> None:
    tap = await CallTap(nc, new_sid()).start()
    ask = Transcript(call_sid=tap.sid, utterance_id=1, text="my member number", is_final=True)
    await tap.send(subjects.transcript(tap.sid), ask)
    await tap.wait_for(lambda: turn_over(tap, 1), what="ask")
    await press(tap, "123#")
    await tap.wait_for(lambda: turn_over(tap, 2), what="short entry")
    assert said(tap, 2).startswith("Sorry, a member ID has 6 digits.")
    await press(tap, "654321")
    await tap.wait_for(lambda: turn_over(tap, 3), what="second entry")
    assert "member ID 6 5 4 3 2 1" in said(tap, 3)


async def test_entry_completes_after_the_inter_key_timeout() -> None:
    digits = DigitCollector(store=Store(url=""))
    sid = new_sid()
    await digits.start(sid, DigitRequest(num_digits=6, timeout_s=0.5))
    first = await digits.on_digit(sid, "4")
    assert first is not None and not first.done and first.waiting_s == 0.5
    second = await digits.on_digit(sid, "2")
    assert second is not None and not second.done
    assert await digits.expire(sid, 1) is None, "a key came after the first: not yet"
    done = await digits.expire(sid, 2)
    assert done is not None and done.done and done.entry == "42"
    assert await digits.on_digit(sid, "7") is None, "after the entry, keys are keys again"


async def _greeting_first_audio_ms(nc: NATS, sid: str) -> tuple[float, float]:
    """CallStarted to the greeting's first audio chunk, and to its last one (ms)."""
    first = asyncio.get_running_loop().create_future()
    done = asyncio.get_running_loop().create_future()
    began = time.perf_counter()

    async def on_audio(msg: Msg) -> None:
        now = (time.perf_counter() - began) * 1000
        if msg.data and not first.done():
            first.set_result(now)
        if msg.headers and msg.headers.get(H.LAST) == "1" and not done.done():
            # The greeting's last segment closes with last=True (see AgentWorker).
            if msg.headers.get(H.SEG) == str(last_seq.get(sid, -1)):
                done.set_result(now)

    last_seq: dict[str, int] = {}

    async def on_reply(msg: Msg) -> None:
        seg = parse_reply(msg.data)
        if seg.last:
            last_seq[sid] = seg.seq

    subs = [
        await nc.subscribe(subjects.audio_out(sid), cb=on_audio),
        await nc.subscribe(subjects.reply(sid), cb=on_reply),
    ]
    await nc.flush()
    began = time.perf_counter()
    await nc.publish(
        subjects.control(sid),
        CallStarted(call_sid=sid, stream_sid="MZ1", gateway_id="gw").to_bytes(),
    )
    try:
        return await asyncio.wait_for(first, 30), await asyncio.wait_for(done, 60)
    finally:
        for s in subs:
            await s.unsubscribe()


async def test_greeting_of_a_later_call_plays_from_the_prompt_cache(
    nc: NATS, nats_private: str
) -> None:
    from services.tts.prompt_cache import PromptCache
    from services.tts.providers.piper import PiperTts
    from services.tts.worker import TtsWorker

    settings = Settings(nats_url=nats_private, redis_url="")
    piper = PiperTts(settings=settings)
    await piper.warm_up()
    tts = TtsWorker(
        settings=settings,
        provider=piper,
        fallback=None,
        broker=make_broker(settings, name="tts-turntaking-test"),
        cache=PromptCache(redis_url="", ttl_s=60, max_chars=160),  # private: no earlier runs
    )
    tts.attach()
    await tts.start()
    try:
        cold, _ = await _greeting_first_audio_ms(nc, new_sid())
        hits = REGISTRY.get_sample_value("voice_tts_cache_total", {"result": "hit"}) or 0.0
        warm, _ = await _greeting_first_audio_ms(nc, new_sid())
        print(f"greeting first audio: first call {cold:.0f} ms, second call {warm:.0f} ms")
        after = REGISTRY.get_sample_value("voice_tts_cache_total", {"result": "hit"}) or 0.0
        assert after > hits, "the second greeting came from the cache"
        assert warm < cold, "cached greeting audio starts sooner than synthesized"
    finally:
        await tts.drain(timeout_s=2)
        await tts.broker.stop()


async def test_backchannel_over_the_reply_is_ignored_but_an_answer_after_it_is_not(
    nc: NATS,
) -> None:
    tap = await CallTap(nc, new_sid()).start()
    started = CallStarted(call_sid=tap.sid, stream_sid="MZ1", gateway_id="gw")
    await tap.send(subjects.control(tap.sid), started)
    await tap.wait_for(lambda: turn_over(tap, 1), what="greeting")
    # The caller says "mm-hm" while the greeting plays: no new turn.
    mm = Transcript(call_sid=tap.sid, utterance_id=1, text="Mm-hmm.", is_final=True)
    await tap.send(subjects.transcript(tap.sid), mm)
    await tap.wait_for(
        lambda: bool(tap.of(Event, name="agent.backchannel_ignored")), what="ignored"
    )
    assert not tap.of(Event, name="agent.turn_started", turn=2)
    # The greeting finishes playing (the gateway reports its last segment heard) ...
    last = max(s.seq for s in tap.of(ReplySegment, turn=1) if s.text)
    await tap.send(
        subjects.control(tap.sid),
        Played(call_sid=tap.sid, turn=1, seq=last, heard_text="...", complete=True),
    )
    await asyncio.sleep(0.2)
    # ... so "okay" now answers the agent and takes the turn.
    ok = Transcript(call_sid=tap.sid, utterance_id=2, text="Okay.", is_final=True)
    await tap.send(subjects.transcript(tap.sid), ok)
    await tap.wait_for(lambda: turn_over(tap, 2), what="a turn for the answer")
