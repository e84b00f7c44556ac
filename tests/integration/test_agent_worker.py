"""``python -m services.agent`` as a separate process on a real NATS (and Redis).

The demo agent answers a call end to end; an OpenAI-compatible fake streaming slowly shows
that an interrupt stops a turn mid-stream in the real process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from devkit.fakes.openai import DEFAULT_ANSWER, FakeOpenAI
from shared import subjects
from shared.messages import (
    AgentAsked,
    CallEnded,
    CallStarted,
    Dtmf,
    Event,
    Hangup,
    Interrupt,
    ReplySegment,
    Transcript,
)
from tests.integration.agent_bus import CallTap, connect, new_sid, private_nats_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class AgentProcess:
    """The agent worker in its own process; stderr is drained so it never blocks."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> AgentProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.agent",
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._reader}, timeout=20, return_when="FIRST_COMPLETED")
        if not self._ready.is_set():
            ready.cancel()
            await self.stop()
            raise AssertionError("agent did not start:\n" + "".join(self.lines[-20:]))
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace")
            self.lines.append(text)
            if "agent worker ready" in text:
                self._ready.set()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=2)
        return self.proc.returncode


@pytest.fixture(scope="module")
def bus_url() -> Iterator[str]:
    with private_nats_server() as url:
        yield url


def base_env(nats_url: str, redis_url: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": "0",
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
        "MCP_SERVER_URL": "",
        "KNOWLEDGE_FILE": "",
    }


@pytest.fixture(scope="module")
async def demo_agent(bus_url: str, redis_url: str) -> AsyncIterator[AgentProcess]:
    agent = await AgentProcess({**base_env(bus_url, redis_url), "AGENT_PROVIDER": "local"}).start()
    yield agent
    assert await agent.stop() == 0


@pytest.fixture
async def nc(bus_url: str) -> AsyncIterator[NATS]:
    client = await connect(bus_url)
    yield client
    await client.close()


def segments(tap: CallTap, turn: int | None = None) -> list[ReplySegment]:
    return [s for s in tap.of(ReplySegment) if turn is None or s.turn == turn]


def turn_complete(tap: CallTap, turn: int) -> bool:
    return any(s.last for s in segments(tap, turn))


def spoken(tap: CallTap, turn: int) -> str:
    return " ".join(s.text for s in segments(tap, turn) if s.text)


def final(sid: str, text: str, utterance_id: int = 1) -> Transcript:
    return Transcript(call_sid=sid, utterance_id=utterance_id, text=text, is_final=True)


async def test_demo_call_greets_answers_and_hangs_up(demo_agent: AgentProcess, nc: NATS) -> None:
    tap = await CallTap(nc, new_sid()).start()
    sid = tap.sid
    await tap.send(
        subjects.control(sid), CallStarted(call_sid=sid, stream_sid="MZ1", gateway_id="gw")
    )
    await tap.wait_for(lambda: turn_complete(tap, 1), what="greeting")
    greeting = segments(tap, 1)
    assert [s.seq for s in greeting] == list(range(len(greeting)))
    assert [s.last for s in greeting] == [False] * (len(greeting) - 1) + [True]
    assert len(greeting) >= 3, "the greeting is streamed sentence by sentence"
    assert "demo assistant, not a language model" in spoken(tap, 1)
    assert greeting[0].cacheable, "fixed prompts are marked for the TTS cache"

    await tap.send(subjects.transcript(sid), final(sid, "What are your opening hours?"))
    await tap.wait_for(lambda: turn_complete(tap, 2), what="answer")
    assert "Monday to Friday" in spoken(tap, 2)
    assert any(e.name == "agent.first_sentence" for e in tap.of(Event, turn=2))

    await tap.send(subjects.control(sid), Dtmf(call_sid=sid, digit="1"))
    await tap.wait_for(lambda: turn_complete(tap, 3), what="dtmf turn")
    assert "What day and time" in spoken(tap, 3)
    # The reply ended by asking for a date: announced (the kind only) for the ASR's decision.
    await tap.wait_for(lambda: any(a.turn == 3 for a in tap.of(AgentAsked)), what="agent_asked")
    assert [a.expects for a in tap.of(AgentAsked) if a.turn == 3] == ["date"]
    assert [a.expects for a in tap.of(AgentAsked) if a.turn == 2] == [None]

    await tap.send(subjects.transcript(sid), final(sid, "Thanks, goodbye!", utterance_id=2))
    await tap.wait_for(lambda: bool(tap.of(Hangup)), what="hangup")
    assert tap.of(Hangup)[0].after_turn == 4
    assert "Goodbye" in spoken(tap, 4)
    await tap.send(subjects.control(sid), CallEnded(call_sid=sid))
    await tap.stop()


async def test_malformed_messages_do_not_kill_it(demo_agent: AgentProcess, nc: NATS) -> None:
    tap = await CallTap(nc, new_sid()).start()
    sid = tap.sid
    for junk in (b"", b"{", b'{"type":"transcript"}', b"\x00\xff" * 50, b'{"type":"nope"}'):
        await tap.send(subjects.transcript(sid), junk)
        await tap.send(subjects.control(sid), junk)
    await tap.send(subjects.transcript(sid), final(sid, "Is there parking?"))
    await tap.wait_for(lambda: turn_complete(tap, 1), what="answer after junk")
    assert "free parking" in spoken(tap, 1)
    assert demo_agent.proc is not None and demo_agent.proc.returncode is None
    assert any("bad message dropped" in line for line in demo_agent.lines)
    await tap.stop()


async def test_logs_carry_no_transcript_text_or_sid(demo_agent: AgentProcess, nc: NATS) -> None:
    tap = await CallTap(nc, new_sid()).start()
    await tap.send(subjects.transcript(tap.sid), final(tap.sid, "Where is the clinic located?"))
    await tap.wait_for(lambda: turn_complete(tap, 1), what="answer")
    await asyncio.sleep(0.1)
    logs = "".join(demo_agent.lines)
    assert tap.sid not in logs
    assert "clinic located" not in logs
    await tap.stop()


async def test_interrupt_mid_turn_stops_the_turn(redis_url: str) -> None:
    # A bus of its own: the demo agent of the other tests is in the same queue group.
    with private_nats_server() as bus_url:
        await _interrupt_scenario(bus_url, redis_url)


async def _interrupt_scenario(bus_url: str, redis_url: str) -> None:
    nc = await connect(bus_url)
    async with FakeOpenAI(api_key="sk-test", chunk_delay_s=0.12) as fake:
        env: dict[str, Any] = {
            **base_env(bus_url, redis_url),
            "AGENT_PROVIDER": "openai",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": fake.base_url,
        }
        agent = await AgentProcess(env).start()
        try:
            tap = await CallTap(nc, new_sid()).start()
            sid = tap.sid
            await tap.send(subjects.transcript(sid), final(sid, "Tell me something nice."))
            await tap.wait_for(lambda: len(segments(tap, 1)) >= 1, what="first sentence")
            await tap.send(subjects.control(sid), Interrupt(call_sid=sid, turn=1))
            await tap.wait_for(
                lambda: any(e.name == "agent.turn_done" for e in tap.of(Event, turn=1)),
                what="turn ended",
            )
            done = next(e for e in tap.of(Event, turn=1) if e.name == "agent.turn_done")
            assert done.data["outcome"] == "interrupted"
            n = len(segments(tap, 1))
            await asyncio.sleep(0.8)  # the full answer would have streamed by now
            assert len(segments(tap, 1)) == n
            assert not turn_complete(tap, 1)
            assert spoken(tap, 1) != DEFAULT_ANSWER
            # The call goes on: the next utterance is a new turn, answered in full.
            await tap.send(subjects.transcript(sid), final(sid, "Go on then.", utterance_id=2))
            await tap.wait_for(lambda: turn_complete(tap, 2), within=10, what="next turn")
            assert spoken(tap, 2) == DEFAULT_ANSWER
            await tap.stop()
        finally:
            await nc.close()
            assert await agent.stop() == 0
