"""A call moved from ASR worker A to B, then back to A, is still answered.

A worker keeps a call it lost (no audio) for ``AUDIO_IDLE_S``; if the gateway claims the call
back from it meanwhile, its recognizer must number the next utterance after the ones B
recognized. It used to go on from its own count: the final came with an utterance id already
answered, the agents' turn leases took it for a done turn (the gateway's re-sends too), and the
caller's sentence went unanswered. On a NATS cluster losing two nodes in a row this is what
happens when the first loss moves the call to the other worker (tests/integration/
test_nats_cluster.py); here SIGSTOP moves it, deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devkit.fakes import openai as fake_llm
from devkit.simulator import new_sid, say
from shared.settings import Settings

from .faults_stack import KNOWLEDGE, Faults, bus_log, fault_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

S1 = "What are your opening hours?"
S2 = "When do you close on Friday?"
S3 = "Thank you, goodbye."
REPROMPT_S = Settings.model_fields["silence_reprompt_s"].default  # the stack's
MOVE_S = 2.5  # > the gateway's 1.5 s of missed heartbeats, plus its claim


@pytest.fixture
async def faults(tmp_path: Path) -> AsyncIterator[Faults]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fake_llm, "GREETING", "Hello, how can I help?")
        mp.setattr(fake_llm, "GOODBYE", "Goodbye.")
        knowledge = tmp_path / "knowledge.md"
        knowledge.write_text(KNOWLEDGE)
        async with fault_stack(knowledge=knowledge) as f:
            yield f


async def test_a_call_claimed_back_by_its_first_asr_worker_is_answered(faults: Faults) -> None:
    sid = new_sid("CA")
    nc, bus = await bus_log(faults.nats_url, sid)
    stopped: list[str] = []

    def holder() -> str:
        claims = [
            e for _, e in bus.events(sid) if e.service == "gateway" and e.name == "asr.claimed"
        ]
        return faults.name_of(str(claims[-1].data["worker"]))

    def on_line(line: str) -> None:
        # The caller waits (this blocks the simulated call) until the gateway, missing the
        # stopped worker's heartbeats for 1.5 s, has moved the call: no audio of the sentence
        # reaches the stopped worker.
        if line == f"caller: {S2}":  # A stops: the gateway moves the call to B
            stopped.append(holder())
            faults.signal(stopped[-1], signal.SIGSTOP)
            time.sleep(MOVE_S)
        elif line == f"caller: {S3}":  # A is back (still holding the call), B stops
            faults.signal(stopped[-1], signal.SIGCONT)
            stopped.append(holder())
            faults.signal(stopped[-1], signal.SIGSTOP)
            time.sleep(MOVE_S)

    try:
        _, task = await faults.call([say(S1), say(S2), say(S3)], sid=sid, on_line=on_line)
        result = await asyncio.wait_for(task, 120)
        claims = [
            str(e.data["worker"])
            for _, e in bus.events(sid)
            if e.service == "gateway" and e.name == "asr.claimed"
        ]
        ctx = f"\nclaims: {claims}\nfinals: {[m.utterance_id for _, m in bus.finals(sid)]}"
        ctx += "\nturns: " + "; ".join(
            f"heard={t.recognized_text!r} reply={t.agent_text!r} latency={t.latency_ms}"
            for t in result.turns
        )
        ctx += f"\n--- services ---\n{faults.logs(120)}"
        assert len(stopped) == 2 and stopped[0] != stopped[1], stopped
        assert [faults.name_of(w) for w in claims[-2:]] == [stopped[1], stopped[0]], ctx
        assert len(result.turns) == 3, ctx
        for i, turn in enumerate(result.turns):
            assert turn.first_audio_at is not None and turn.agent_text, f"turn {i + 1}" + ctx
            # Not the silence reprompt ("Are you still there?"): an answer to the sentence.
            assert turn.latency_ms is not None and turn.latency_ms < REPROMPT_S * 1000, (
                f"turn {i + 1} not answered" + ctx
            )
        ids = [m.utterance_id for _, m in bus.finals(sid)]
        assert ids == sorted(set(ids)), f"utterance ids {ids}" + ctx  # never one twice
    finally:
        for name in stopped:
            with contextlib.suppress(Exception):
                faults.signal(name, signal.SIGCONT)
        await nc.close()
