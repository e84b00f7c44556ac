"""The agent worker's turn handling on a real NATS, with scripted providers.

The providers here are test doubles of the *plug-in interface* (AgentProvider), not of our
code: they make the model's timing and failures controllable, so what is checked is what the
worker puts on the bus (segments, last flags, fallbacks, interrupts, actions) and stores.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from services.agent.control import STAGE_APOLOGY
from services.agent.digits import KeysWhileTalking
from services.agent.history import History
from services.agent.providers.base import (
    AgentOutput,
    AgentProvider,
    HangupAction,
    HistoryItem,
    TransferAction,
    TurnInput,
)
from services.agent.store import Store
from services.agent.turn import FALLBACK_TEXT
from services.agent.worker import AgentWorker
from shared import subjects
from shared.bus import make_broker
from shared.errors import ProviderError
from shared.messages import (
    CallEnded,
    CallStarted,
    Dtmf,
    Event,
    Hangup,
    Interrupt,
    Played,
    ReplySegment,
    SpeechStarted,
    StageFailed,
    Transcript,
    Transfer,
)
from shared.settings import Settings
from tests.integration.agent_bus import CallTap, connect, new_sid, private_nats_server

TIMEOUT_S = 0.6


class Scripted(AgentProvider):
    """Plays a script chosen by the caller's words: text, pauses (floats), errors, actions."""

    name = "scripted"

    SCRIPTS: ClassVar[dict[str, list[Any]]] = {
        "hello": ["Hi", " there", ". How can", " I help", " you today", "?"],
        "fail": [ProviderError("model down", provider="scripted", retryable=False)],
        "hang": [30.0],
        "tool": [
            "Let me check that",
            ".",
            0.4,
            HistoryItem(message={"role": "assistant", "content": None, "tool_calls": []}),
            "We are open until six.",
        ],
        "pause-end": ["First sentence. ", 0.3],
        "bye": ["Goodbye!", HangupAction(reason="done")],
        "transfer": ["Transferring you now.", TransferAction(to="+15551230000")],
        "slow": [f"Sentence number {i}. " if i % 2 == 0 else 0.15 for i in range(40)],
        "fail-late": ["One sentence. Another", ProviderError("cut", provider="scripted")],
        "7": ["You pressed seven."],
    }

    def __init__(self) -> None:
        self.inputs: list[TurnInput] = []

    async def respond(self, turn: TurnInput) -> AsyncIterator[AgentOutput]:
        self.inputs.append(turn)
        script = ["Welcome."] if turn.kind == "call_started" else self.SCRIPTS[turn.text]
        for step in script:
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif isinstance(step, Exception):
                raise step
            else:
                yield step


@pytest.fixture(scope="module")
def nats_url_private() -> Iterator[str]:
    with private_nats_server() as url:
        yield url


class Rig:
    def __init__(self, worker: AgentWorker, provider: Scripted, history: History, nc: NATS):
        self.worker = worker
        self.provider = provider
        self.history = history
        self.nc = nc

    async def tap(self) -> CallTap:
        return await CallTap(self.nc, new_sid()).start()


@pytest.fixture
async def rig(nats_url_private: str, redis_url: str) -> AsyncIterator[Rig]:
    settings = Settings(
        nats_url=nats_url_private, redis_url=redis_url, provider_timeout_s=TIMEOUT_S
    )
    broker = make_broker(settings, name="agent-test")
    provider = Scripted()
    store = Store(url=redis_url)
    history = History(store=store)
    worker = AgentWorker(settings=settings, provider=provider, history=history, broker=broker)
    worker.attach()
    await broker.start()
    nc = await connect(nats_url_private)
    try:
        yield Rig(worker, provider, history, nc)
    finally:
        await nc.close()
        await worker.drain(timeout_s=2)
        await broker.stop()
        await store.aclose()


_UTTERANCES = itertools.count(1)


def final(sid: str, text: str, **kw: Any) -> Transcript:
    # Every caller utterance has its own id (as ASR numbers them): the agent answers each once.
    uid = kw.pop("utterance_id", next(_UTTERANCES))
    return Transcript(call_sid=sid, utterance_id=uid, text=text, is_final=True, **kw)


async def say(tap: CallTap, text: str, **kw: Any) -> None:
    await tap.send(subjects.transcript(tap.sid), final(tap.sid, text, **kw))


def segments(tap: CallTap, turn: int | None = None) -> list[ReplySegment]:
    segs = tap.of(ReplySegment)
    return [s for s in segs if turn is None or s.turn == turn]


def turn_done(tap: CallTap, turn: int) -> bool:
    return any(e.name == "agent.turn_done" for e in tap.of(Event, turn=turn))


async def test_streamed_reply_is_cut_into_sentences_last_flag_on_the_final_one(rig: Rig) -> None:
    tap = await rig.tap()
    await say(tap, "hello", speech_ended_at=time.time(), utterance_id=1)
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="last segment")
    segs = segments(tap)
    assert [(s.turn, s.seq, s.text, s.last) for s in segs] == [
        (1, 0, "Hi there.", False),
        (1, 1, "How can I help you today?", True),
    ]
    assert all(s.utterance_id == 1 for s in segs)
    await tap.wait_for(lambda: turn_done(tap, 1), what="turn done")
    names = [e.name for e in tap.of(Event)]
    assert names[:2] == ["agent.turn_started", "agent.first_sentence"]
    first = tap.of(Event, name="agent.first_sentence")[0]
    assert first.data["ms"] is not None and "since_speech_end_ms" in first.data
    assert await rig.history.load(tap.sid) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi there. How can I help you today?"},
    ]


async def test_greeting_on_call_started_gets_turn_one(rig: Rig) -> None:
    tap = await rig.tap()
    await tap.send(
        subjects.control(tap.sid), CallStarted(call_sid=tap.sid, stream_sid="MZ1", gateway_id="g")
    )
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="greeting")
    assert [(s.turn, s.text, s.last) for s in segments(tap)] == [(1, "Welcome.", True)]
    assert rig.provider.inputs[-1].kind == "call_started"


async def test_provider_error_is_never_dead_air(rig: Rig) -> None:
    tap = await rig.tap()
    await say(tap, "fail")
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="fallback")
    segs = segments(tap)
    assert [(s.text, s.last, s.cacheable) for s in segs] == [(FALLBACK_TEXT, True, True)]


async def test_provider_that_hangs_gets_the_fallback_within_its_deadline(rig: Rig) -> None:
    tap = await rig.tap()
    started = time.monotonic()
    await say(tap, "hang")
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="fallback")
    assert segments(tap)[0].text == FALLBACK_TEXT
    assert time.monotonic() - started < TIMEOUT_S + 0.5


async def test_failure_after_some_text_keeps_what_was_said_and_apologizes(rig: Rig) -> None:
    tap = await rig.tap()
    await say(tap, "fail-late")
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="fallback")
    assert [(s.seq, s.text, s.last) for s in segments(tap)] == [
        (0, "One sentence.", False),
        (1, FALLBACK_TEXT, True),
    ]


async def test_sentence_before_a_tool_call_is_not_held_back(rig: Rig) -> None:
    tap = await rig.tap()
    started = time.monotonic()
    await say(tap, "tool")
    await tap.wait_for(lambda: len(segments(tap)) >= 1, what="first sentence")
    assert time.monotonic() - started < 0.35, "the sentence must not wait for the tool"
    assert segments(tap)[0].text == "Let me check that." and not segments(tap)[0].last
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="last")
    assert [(s.seq, s.text, s.last) for s in segments(tap)] == [
        (0, "Let me check that.", False),
        (1, "We are open until six.", True),
    ]


async def test_stream_ending_after_a_pause_closes_the_turn_with_an_empty_last(rig: Rig) -> None:
    tap = await rig.tap()
    await say(tap, "pause-end")
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="last")
    assert [(s.text, s.last) for s in segments(tap)] == [("First sentence.", False), ("", True)]


async def test_actions_are_published_after_the_turn(rig: Rig) -> None:
    tap = await rig.tap()
    await say(tap, "bye")
    await tap.wait_for(lambda: bool(tap.of(Hangup)), what="hangup")
    assert tap.of(Hangup)[0].after_turn == 1 and tap.of(Hangup)[0].reason == "done"
    assert segments(tap)[-1].last
    await say(tap, "transfer")
    await tap.wait_for(lambda: bool(tap.of(Transfer)), what="transfer")
    assert tap.of(Transfer)[0].after_turn == 2
    assert tap.of(Transfer)[0].to == "+15551230000"


async def test_interrupt_stops_the_turn_and_history_keeps_only_what_was_sent(rig: Rig) -> None:
    tap = await rig.tap()
    await say(tap, "slow")
    await tap.wait_for(lambda: len(segments(tap)) >= 2, what="two segments")
    await tap.send(subjects.control(tap.sid), Interrupt(call_sid=tap.sid, turn=1))
    await tap.wait_for(lambda: turn_done(tap, 1), what="turn done")
    sent = len(segments(tap))
    await asyncio.sleep(0.5)
    assert len(segments(tap)) == sent, "no segment after the interrupt"
    assert not any(s.last for s in segments(tap))
    done = tap.of(Event, name="agent.turn_done")[0]
    assert done.data["outcome"] == "interrupted"
    said = (await rig.history.load(tap.sid))[-1]["content"]
    assert said == " ".join(s.text for s in segments(tap))


async def test_new_utterance_cancels_the_generating_turn_and_answers(rig: Rig) -> None:
    tap = await rig.tap()
    await say(tap, "slow")
    await tap.wait_for(lambda: len(segments(tap, 1)) >= 1, what="turn 1 started")
    await say(tap, "hello")
    await tap.wait_for(lambda: any(s.last for s in segments(tap, 2)), what="turn 2 answered")
    assert tap.of(Interrupt, turn=1), "downstream must be told to drop turn 1"
    n1 = len(segments(tap, 1))
    await asyncio.sleep(0.4)
    assert len(segments(tap, 1)) == n1
    # Turn 2's model saw turn 1's words and what was said of it.
    history = rig.provider.inputs[-1].history
    assert history[0] == {"role": "user", "content": "slow"}
    assert history[1]["role"] == "assistant" and history[1]["content"].startswith("Sentence")


async def test_played_truncates_the_reply_in_history(rig: Rig) -> None:
    tap = await rig.tap()
    await say(tap, "hello")
    await tap.wait_for(lambda: turn_done(tap, 1), what="turn done")
    await tap.send(
        subjects.control(tap.sid),
        Played(call_sid=tap.sid, turn=1, seq=1, heard_text="How can", complete=False),
    )

    async def truncated() -> bool:
        return (await rig.history.load(tap.sid))[-1]["content"] == "Hi there. How can"

    for _ in range(50):
        if await truncated():
            break
        await asyncio.sleep(0.02)
    assert await truncated()


def _bad_count() -> float:
    total = 0.0
    for source in ("transcript", "control"):
        v = REGISTRY.get_sample_value(
            "voice_bad_messages_total", {"service": "agent", "source": source}
        )
        total += v or 0.0
    return total


async def test_malformed_messages_are_dropped_and_the_worker_goes_on(rig: Rig) -> None:
    tap = await rig.tap()
    before = _bad_count()
    await tap.send(subjects.transcript(tap.sid), b"{not json")
    await tap.send(subjects.control(tap.sid), b'{"type": "dtmf", "call_sid": "x"}')
    # A body naming another call than its subject is refused too.
    await tap.send(subjects.transcript(tap.sid), final(new_sid(), "hello"))
    await tap.send(subjects.transcript(tap.sid), b"\xff\xfe")
    await say(tap, "hello")
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="answer")
    assert _bad_count() - before == 4
    assert [s.turn for s in segments(tap)] == [1, 1]


async def test_interim_and_empty_transcripts_start_no_turn(rig: Rig) -> None:
    tap = await rig.tap()
    await tap.send(
        subjects.transcript(tap.sid),
        Transcript(call_sid=tap.sid, utterance_id=1, text="hel", is_final=False),
    )
    await tap.send(subjects.transcript(tap.sid), final(tap.sid, "   "))
    await say(tap, "hello")
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="answer")
    assert {s.turn for s in segments(tap)} == {1}


async def test_drain_lets_a_running_turn_finish(nats_url_private: str) -> None:
    settings = Settings(nats_url=nats_url_private, redis_url="", provider_timeout_s=2.0)
    broker = make_broker(settings, name="agent-drain-test")
    worker = AgentWorker(
        settings=settings, provider=Scripted(), history=History(store=Store(url="")), broker=broker
    )
    worker.attach()
    await broker.start()
    nc = await connect(nats_url_private)
    tap = await CallTap(nc, new_sid()).start()
    try:
        await say(tap, "tool")
        await tap.wait_for(lambda: len(segments(tap)) >= 1, what="turn running")
        await worker.drain(timeout_s=5)
        await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="turn finished")
        # No longer taking turns.
        await say(tap, "hello")
        await asyncio.sleep(0.3)
        assert {s.turn for s in segments(tap)} == {1}
    finally:
        await nc.close()
        await broker.stop()


async def test_key_press_is_a_turn_with_the_digit_as_input(rig: Rig) -> None:
    tap = await rig.tap()
    await tap.send(subjects.control(tap.sid), Dtmf(call_sid=tap.sid, digit="7"))
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="answer")
    assert segments(tap)[0].text == "You pressed seven."
    assert rig.provider.inputs[-1].kind == "dtmf"
    assert (await rig.history.load(tap.sid))[0]["content"] == "[caller pressed 7]"


async def test_a_key_pressed_while_talking_joins_the_words_in_one_answer(rig: Rig) -> None:
    tap = await rig.tap()
    await tap.send(
        subjects.transcript(tap.sid), SpeechStarted(call_sid=tap.sid, utterance_id=1, audio_ms=0)
    )
    await asyncio.sleep(0.1)
    await tap.send(subjects.control(tap.sid), Dtmf(call_sid=tap.sid, digit="7"))
    await asyncio.sleep(0.4)  # the caller is still talking: no answer to the key alone
    assert not segments(tap)
    await say(tap, "hello", utterance_id=1)
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="answer")
    await asyncio.sleep(0.5)  # the key is not answered again on its own
    assert {s.turn for s in segments(tap)} == {1}
    assert [(i.kind, i.text, i.keys) for i in rig.provider.inputs] == [("utterance", "hello", "7")]
    assert (await rig.history.load(tap.sid))[0]["content"] == "[caller pressed 7] hello"


async def test_a_key_pressed_over_noise_is_answered_when_the_noise_ends(rig: Rig) -> None:
    tap = await rig.tap()
    await tap.send(
        subjects.transcript(tap.sid), SpeechStarted(call_sid=tap.sid, utterance_id=1, audio_ms=0)
    )
    await asyncio.sleep(0.1)
    await tap.send(subjects.control(tap.sid), Dtmf(call_sid=tap.sid, digit="7"))
    await asyncio.sleep(0.3)
    assert not segments(tap)
    await say(tap, "", utterance_id=1)  # the onset was a cough: no words
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="answer to the key")
    assert segments(tap)[0].text == "You pressed seven."
    assert rig.provider.inputs[-1].kind == "dtmf"


async def test_a_key_held_when_the_call_ends_is_not_answered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(KeysWhileTalking, "TALK_TTL_S", 1.0)  # the talking mark lapses soon
    tap = await rig.tap()
    await tap.send(
        subjects.transcript(tap.sid), SpeechStarted(call_sid=tap.sid, utterance_id=1, audio_ms=0)
    )
    await asyncio.sleep(0.1)
    await tap.send(subjects.control(tap.sid), Dtmf(call_sid=tap.sid, digit="7"))
    await asyncio.sleep(0.2)
    await tap.send(subjects.control(tap.sid), CallEnded(call_sid=tap.sid, reason="stop"))
    await asyncio.sleep(1.5)  # past the mark's lapse: a key still held would be answered now
    assert not segments(tap)
    assert not rig.provider.inputs


async def test_a_failed_recognizer_gets_an_apology_a_failed_voice_does_not(rig: Rig) -> None:
    tap = await rig.tap()
    await tap.send(
        subjects.control(tap.sid), StageFailed(call_sid=tap.sid, service="tts", reason="down")
    )
    # ASR's own subject carries only its failures: a key forged there starts no turn.
    await tap.send(subjects.asr_control(tap.sid), Dtmf(call_sid=tap.sid, digit="0"))
    await tap.send(
        subjects.asr_control(tap.sid), StageFailed(call_sid=tap.sid, service="asr", reason="down")
    )
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="apology")
    await asyncio.sleep(0.2)
    assert [(s.text, s.last) for s in segments(tap)] == [(STAGE_APOLOGY, True)]


async def test_a_turn_taken_over_from_a_dead_replica_goes_on_without_repeating(rig: Rig) -> None:
    # The replica that held utterance 1 published its first sentence, then died: its progress
    # record and the user's words are in Redis, its lease has lapsed, the gateway re-sends.
    from services.agent.history import user_message
    from services.agent.leases import TurnLeases, TurnProgress

    tap = await rig.tap()
    dead = TurnLeases(store=rig.history.store, owner="agent-dead")
    await dead.record(tap.sid, 1, TurnProgress(turn=7, said=["Hi there."]))
    await rig.history.append(tap.sid, [user_message("hello", turn=7)])
    await say(tap, "hello", utterance_id=1)
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="last segment")
    # The dead holder's last sentence goes out again under its own number (it may not have
    # been published: progress is recorded first; the gateway drops it if it has it).
    assert [(s.turn, s.seq, s.text, s.last) for s in segments(tap)] == [
        (7, 0, "Hi there.", False),
        (7, 1, "How can I help you today?", True),
    ]
    await tap.wait_for(lambda: turn_done(tap, 7), what="turn done")
    assert await rig.history.load(tap.sid) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi there. How can I help you today?"},
    ]
    started = tap.of(Event, name="agent.turn_started")[0]
    assert started.data["resumed_segments"] == 1
    # The model is asked once about the caller's words, not with them in its history too.
    assert rig.provider.inputs[-1].text == "hello"
    assert {"role": "user", "content": "hello"} not in rig.provider.inputs[-1].history


async def test_a_taken_over_reply_that_goes_another_way_is_spoken_from_there(rig: Rig) -> None:
    from services.agent.leases import TurnLeases, TurnProgress

    tap = await rig.tap()
    dead = TurnLeases(store=rig.history.store, owner="agent-dead")
    await dead.record(tap.sid, 2, TurnProgress(turn=4, said=["Well, let me see."]))
    await say(tap, "hello", utterance_id=2)
    await tap.wait_for(lambda: any(s.last for s in segments(tap)), what="last segment")
    assert [(s.turn, s.seq, s.text) for s in segments(tap)] == [
        (4, 0, "Well, let me see."),
        (4, 1, "Hi there."),
        (4, 2, "How can I help you today?"),
    ]
