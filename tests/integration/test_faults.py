"""Faults over the real bus: workers killed or stopped mid-call, NATS restarted, Redis stopped.

One stack for the module: gateway, two ASR, two agent and two TTS worker processes, a private
nats-server and redis-server (see ``faults_stack.py``). A simulated Twilio caller speaks real
sentences; a separate bus subscription records what crossed NATS. The protocol these tests
hold the system to is docs/failover.md.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from devkit.fakes import openai as fake_llm
from devkit.simulator import CallResult, SimulatedCall, new_sid, say, word_recall
from services.asr.transcript_filter import normalize_words
from shared import subjects
from shared.messages import (
    Played,
    SpeechStarted,
    TurnHeartbeat,
    parse_control,
    parse_event,
    parse_reply,
    parse_transcript,
)
from voiceagent.stack import gateway_healthy

from .faults_stack import (
    KNOWLEDGE,
    TOKEN,
    BusLog,
    Faults,
    bus_log,
    fault_stack,
    is_event,
    is_final,
    is_reply,
)

pytestmark = pytest.mark.integration

S1 = "What are your opening hours?"
S2 = "Thank you, goodbye."  # answered with a goodbye, then the agent hangs up
APOLOGY = "having trouble"
PROVIDER_TIMEOUT_S = 8.0  # the agent's spoken-fallback deadline (PROVIDER_TIMEOUT_S default)


@pytest.fixture(scope="module")
async def faults(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Faults]:
    with pytest.MonkeyPatch.context() as mp:
        # The in-process LLM fake's fixed lines, shortened: calls play in real time.
        mp.setattr(fake_llm, "GREETING", "Hello, how can I help?")
        mp.setattr(fake_llm, "GOODBYE", "Goodbye.")
        knowledge = tmp_path_factory.mktemp("faults") / "knowledge.md"
        knowledge.write_text(KNOWLEDGE)
        async with fault_stack(knowledge=knowledge) as f:
            yield f


def _ctx(faults: Faults, result: CallResult | None = None) -> str:
    turns = ""
    if result is not None:
        turns = "; ".join(
            f"{t.kind}: heard={t.recognized_text!r} reply={t.agent_text!r} "
            f"latency={t.latency_ms} finished={t.finished}"
            for t in result.exchanges
        )
    return f"\nturns: {turns}\n--- service output ---\n{faults.logs()}"


def _report(name: str, bus: BusLog, sid: str, since: float, **facts: object) -> None:
    """What happened, for `pytest -s` (the figures docs/failover.md quotes)."""
    names = ("asr.lost", "asr.claimed", "agent.retry", "tts.retry", "playback.skipped")
    seen = [
        f"{e.name}@{at - since:+.2f}s"
        for at, e in bus.events(sid)
        if e.service == "gateway" and e.name in names
    ]
    print(f"\n[{name}] {facts} gateway events: {seen}")


def _answered(result: CallResult, i: int) -> bool:
    t = result.turns[i]
    return t.first_audio_at is not None and bool(t.agent_text) and APOLOGY not in t.agent_text


async def test_asr_worker_killed_another_claims_within_2s_and_hears_the_next_sentence(
    faults: Faults,
) -> None:
    sid = new_sid("CA")
    nc, bus = await bus_log(faults.nats_url, sid)
    try:
        first_final = bus.when(is_final(sid))
        _, task = await faults.call([say(S1), say(S2)], sid=sid)
        await asyncio.wait_for(first_final, 40)
        claims = [
            e for _, e in bus.events(sid) if e.service == "gateway" and e.name == "asr.claimed"
        ]
        holder = str(claims[-1].data["worker"])
        last_id_before = max(m.utterance_id for m in bus.transcripts(sid))
        reclaimed = bus.when(is_event(sid, "asr.claimed", reclaim=True))
        faults.signal(faults.name_of(holder), signal.SIGKILL)
        killed_at = time.monotonic()
        result = await asyncio.wait_for(task, 90)
        ctx = _ctx(faults, result)

        # Another worker holds the call within 2 s of the kill.
        assert reclaimed.done(), "no re-claim" + ctx
        took = reclaimed.result() - killed_at
        assert took < 2.0, f"re-claimed after {took:.2f} s" + ctx
        reclaim = next(e for _, e in bus.events(sid) if e.data.get("reclaim") is True)
        assert reclaim.data["worker"] != holder
        _report("asr kill", bus, sid, killed_at, reclaimed_s=round(took, 2), claim=reclaim.data)

        # The next sentence is recognized and answered; the replayed audio did not make the new
        # worker recognize the first sentence again. The next sentence may arrive as two finals
        # ("Thank you." then "Goodbye.": the gateway joins them into one turn), so it is judged
        # on the finals' joined words, and a repeat on its resemblance to the first sentence.
        after = [m for at, m in bus.finals(sid) if at > killed_at]
        assert word_recall(S2, " ".join(m.text for m in after)) >= 0.6, ctx
        again = [m.text for m in after if word_recall(S1, m.text) >= 0.5]
        assert again == [], f"recognized again after the failover: {again}" + ctx
        assert _answered(result, 1), ctx

        # Utterance ids keep increasing across the failover.
        ids = [m.utterance_id for _, m in bus.finals(sid)]
        assert ids == sorted(set(ids)), ids
        assert min(m.utterance_id for m in after) > last_id_before, ids
    finally:
        await nc.close()


async def test_calls_spread_over_every_replica_and_play_in_order(faults: Faults) -> None:
    """Two replicas per stage, no configuration: calls spread across ASR workers, turns and
    segments go to any agent and TTS replica, each call hears its segments in order."""
    n = 12  # all on one of two replicas by chance: 2 / 2**12 per stage
    sids = [new_sid("CA") for _ in range(n)]
    logs = [await bus_log(faults.nats_url, sid) for sid in sids]
    try:
        calls = [await faults.call([say(S1)], sid=sid) for sid in sids]
        results = await asyncio.wait_for(asyncio.gather(*(t for _, t in calls)), 120)
        for sid, result in zip(sids, results, strict=True):
            assert _answered(result, 0), f"{sid}: " + _ctx(faults, result)

        asr, agents, tts = set(), set(), set()
        for sid, (_, bus) in zip(sids, logs, strict=True):
            events = [e for _, e in bus.events(sid)]
            asr |= {
                e.data["worker"]
                for e in events
                if e.service == "gateway" and e.name == "asr.claimed"
            }
            tts |= {e.data["worker"] for e in events if e.name == "tts.segment_done"}
            agents |= {
                TurnHeartbeat.model_validate_json(d).worker_id
                for _, s, d, _ in bus.messages
                if s == subjects.turn_heartbeat(sid)
            }
            played = [
                (m.turn, m.seq)
                for _, s, d, _ in bus.messages
                if s == subjects.control(sid) and isinstance(m := parse_control(d), Played)
            ]
            assert played and played == sorted(played), f"{sid} played out of order: {played}"
        assert len(asr) == 2, f"ASR workers holding the {n} calls: {asr}"
        assert len(agents) == 2, f"agent replicas answering: {agents}"
        assert len(tts) == 2, f"TTS replicas synthesizing: {tts}"
    finally:
        for nc, _ in logs:
            await nc.close()


async def test_agent_killed_mid_turn_another_replica_answers_once(faults: Faults) -> None:
    sid = new_sid("CA")
    nc, bus = await bus_log(faults.nats_url, sid)
    try:
        speaking = bus.when(
            lambda s, d: (
                s == subjects.transcript(sid) and isinstance(parse_transcript(d), SpeechStarted)
            )
        )
        beat = bus.when(lambda s, d: s == subjects.turn_heartbeat(sid))
        _, task = await faults.call([say(S1)], sid=sid)
        await asyncio.wait_for(speaking, 40)
        asked = len(faults.llm.requests)
        faults.llm.inject("hang", times=1)  # the replica that takes the turn never hears back
        await asyncio.wait_for(beat, 30)
        for _ in range(200):  # until the hanging request is under way
            if len(faults.llm.requests) > asked:
                break
            await asyncio.sleep(0.05)
        hb = next(
            TurnHeartbeat.model_validate_json(d)
            for _, s, d, _ in bus.messages
            if s == subjects.turn_heartbeat(sid)
        )
        await asyncio.sleep(0.3)
        faults.signal(faults.name_of(hb.worker_id), signal.SIGKILL)
        killed_at = time.monotonic()
        result = await asyncio.wait_for(task, 60)
        ctx = _ctx(faults, result)

        assert _answered(result, 0), ctx
        answer = result.turns[0]
        _report("agent kill", bus, sid, killed_at, reply_latency_ms=answer.latency_ms)
        assert answer.latency_ms is not None
        assert answer.latency_ms < PROVIDER_TIMEOUT_S * 1000, ctx
        # One reply for the utterance, from one turn: no duplicate answer.
        reply_turns = {s.turn for s in bus.segments(sid) if s.utterance_id == hb.utterance_id}
        assert len(reply_turns) == 1, f"turns answering the utterance: {reply_turns}" + ctx
        retries = [e for _, e in bus.events(sid) if e.name == "agent.retry"]
        assert retries, "the gateway never re-sent the turn" + ctx
    finally:
        faults.llm.clear_faults()
        await nc.close()


async def test_agent_killed_after_its_first_sentence_the_rest_is_said_once(faults: Faults) -> None:
    sid = new_sid("CA")
    nc, bus = await bus_log(faults.nats_url, sid)
    try:
        first_final = bus.when(is_final(sid))
        _, task = await faults.call([say(S1)], sid=sid, quiet_s=3.0)
        await asyncio.wait_for(first_final, 40)
        uid = bus.finals(sid)[0][1].utterance_id
        faults.llm._state.chunk_delay_s = 0.3  # the reply streams slowly: time to kill mid-way

        def partial(s: str, d: bytes) -> bool:
            if s != subjects.reply(sid):
                return False
            seg = parse_reply(d)
            return seg.utterance_id == uid and bool(seg.text) and not seg.last

        await asyncio.wait_for(bus.when(partial), 30)
        hb = next(
            TurnHeartbeat.model_validate_json(d)
            for _, s, d, _ in bus.messages
            if s == subjects.turn_heartbeat(sid)
        )
        faults.signal(faults.name_of(hb.worker_id), signal.SIGKILL)
        killed_at = time.monotonic()
        faults.llm._state.chunk_delay_s = 0.002
        result = await asyncio.wait_for(task, 60)
        ctx = _ctx(faults, result)

        assert _answered(result, 0), ctx
        segs = [g for g in bus.segments(sid) if g.utterance_id == uid]
        _report("agent kill after a sentence", bus, sid, killed_at, segments=len(segs))
        # One turn, numbered without gaps; a segment sent again by the successor (the dead
        # holder's last one may not have gone out) has the same words; the caller hears each
        # segment once (Twilio echoes one mark per segment played) and no sentence twice.
        assert len({g.turn for g in segs}) == 1, [(g.turn, g.seq, g.text) for g in segs]
        by_seq = {g.seq: g.text for g in segs}
        assert sorted(by_seq) == list(range(len(by_seq))), ctx
        assert all(by_seq[g.seq] == g.text for g in segs), [(g.seq, g.text) for g in segs]
        played = [m for m in result.marks_echoed if m.startswith(f"{segs[0].turn}:")]
        assert len(played) == len(set(played)), f"played twice: {played}" + ctx
        spoken = [t for t in by_seq.values() if t]
        assert len(spoken) == len(set(spoken)) >= 2, f"said twice: {spoken}" + ctx
        assert segs and any(g.last for g in segs if g.seq == max(by_seq))
        resumed = [e for _, e in bus.events(sid) if e.name == "agent.turn_started"]
        assert any((e.data.get("resumed_segments") or 0) >= 1 for e in resumed), ctx
    finally:
        faults.llm.clear_faults()
        faults.llm._state.chunk_delay_s = 0.002
        await nc.close()


async def test_tts_killed_mid_segment_the_segment_is_made_again_and_played_once(
    faults: Faults,
) -> None:
    sid = new_sid("CA")
    nc, bus = await bus_log(faults.nats_url, sid)
    try:
        first_final = bus.when(is_final(sid))
        # quiet_s: the caller waits out the failover gap instead of taking the reply as over.
        _, task = await faults.call([say(S1)], sid=sid, quiet_s=3.0)
        await asyncio.wait_for(first_final, 40)
        faults.tts.piece_delay_s = 0.25  # synthesis slower than real time: time to kill it
        uid = bus.finals(sid)[0][1].utterance_id
        await asyncio.wait_for(bus.when(is_reply(sid, uid)), 20)
        turn = next(g.turn for g in bus.segments(sid) if g.utterance_id == uid)
        seg1 = bus.when(
            lambda s, d: (
                s == subjects.events(sid)
                and parse_event(d).name == "tts.first_audio"
                and parse_event(d).turn == turn
                and parse_event(d).data.get("seq") == 1
            )
        )
        # The second sentence, a long one.
        await asyncio.wait_for(seg1, 20)
        ev = next(
            e
            for _, e in bus.events(sid)
            if e.name == "tts.first_audio" and e.turn == turn and e.data.get("seq") == 1
        )
        await asyncio.sleep(0.4)
        faults.signal(faults.name_of(str(ev.data["worker"])), signal.SIGKILL)
        killed_at = time.monotonic()
        faults.tts.piece_delay_s = 0.0
        result = await asyncio.wait_for(task, 60)
        ctx = _ctx(faults, result)
        _report("tts kill", bus, sid, killed_at, heard_ms=result.turns[0].reply_ms)

        assert any(e.name == "tts.retry" for _, e in bus.events(sid)), "no re-synthesis" + ctx
        skipped = [e.data for _, e in bus.events(sid) if e.name == "playback.skipped"]
        assert skipped == [], f"segments skipped: {skipped}" + ctx
        assert result.marks_received.count(f"{turn}:1") == 1, result.marks_received
        # Played once: what the caller heard of the reply is its audio, not more, not less.
        texts = [s.text for s in bus.segments(sid) if s.turn == turn and s.text.strip()]
        expected = 0
        for text in dict.fromkeys(texts):
            expected += len(await faults.tts.synth(text))
        heard = len(result.turns[0].reply_audio)
        assert abs(heard - expected) <= 0.1 * expected + 1600, (heard, expected, ctx)
    finally:
        faults.tts.piece_delay_s = 0.0
        await nc.close()


async def test_redis_stopped_mid_call_the_call_goes_on_and_recovers(faults: Faults) -> None:
    sid = new_sid("CA")
    nc, bus = await bus_log(faults.nats_url, sid)
    try:
        started = bus.when(is_event(sid, "call.started"))
        first_final = bus.when(is_final(sid))
        _, task = await faults.call([say(S1), say(S2)], sid=sid)
        await asyncio.wait_for(started, 20)
        faults.redis.stop()
        await asyncio.wait_for(first_final, 40)
        uid = bus.finals(sid)[0][1].utterance_id
        replied = bus.when(is_reply(sid, uid, last=True))
        await asyncio.wait_for(replied, 20)
        faults.redis.start()  # empty: a Redis that lost everything
        result = await asyncio.wait_for(task, 60)
        ctx = _ctx(faults, result)

        assert _answered(result, 0), "no answer while Redis was down" + ctx
        assert _answered(result, 1), "no answer after Redis came back" + ctx
        uids = sorted({m.utterance_id for _, m in bus.finals(sid)})
        turns = [min(s.turn for s in bus.segments(sid) if s.utterance_id == u) for u in uids]
        assert turns == sorted(set(turns)), f"turn ids went backwards: {turns}"
        # Memory is written to Redis again once it is back.
        r = aioredis.Redis.from_url(faults.redis.url, decode_responses=True)
        try:
            hist = " ".join(await r.lrange(f"va:hist:{{{sid}}}", 0, -1)).lower()
        finally:
            await r.aclose()
        # Judged on what the recognizer heard of the second sentence, not on fixed words: one
        # CI run heard only "Thank you." of it (not reproduced here), and the agent's answer
        # then had no goodbye in it either.
        heard = normalize_words(result.turns[1].recognized_text)
        assert heard, "the second sentence was not recognized" + ctx
        assert set(heard) <= set(normalize_words(hist)), f"history in Redis: {hist[:300]!r}" + ctx
    finally:
        await nc.close()


async def test_nats_restarted_mid_call_every_service_reconnects(faults: Faults) -> None:
    sid = new_sid("CA")
    nc, bus = await bus_log(faults.nats_url, sid)
    try:
        first_final = bus.when(is_final(sid))
        _, task = await faults.call([say(S1), say(S2)], sid=sid)
        await asyncio.wait_for(first_final, 40)
        uid = bus.finals(sid)[0][1].utterance_id
        replied = bus.when(is_reply(sid, uid, last=True))
        await asyncio.wait_for(replied, 20)
        faults.signal("nats", signal.SIGKILL)  # the supervisor starts it again
        restarted_at = time.monotonic()
        result = await asyncio.wait_for(task, 60)
        ctx = _ctx(faults, result)

        after = [m for at, m in bus.finals(sid) if at > restarted_at]
        _report("nats restart", bus, sid, restarted_at, latency_ms=result.turns[1].latency_ms)
        assert any(word_recall(S2, m.text) >= 0.6 for m in after), ctx
        assert _answered(result, 1), ctx
        # The call's recognizer is held after the restart: heartbeats flow again.
        beats = [
            at
            for at, s, _, _ in bus.messages
            if s == subjects.asr_heartbeat(sid) and at > restarted_at
        ]
        assert beats, "no ASR heartbeat after the restart" + ctx
    finally:
        await nc.close()


async def test_sigterm_drains_every_service_and_exits_0(faults: Faults) -> None:
    await faults.whole()
    info = faults.stack.info
    assert info is not None
    sid = new_sid("CA")
    nc, bus = await bus_log(faults.nats_url, sid)
    signalled: dict[str, int] = {}  # name -> its runs before the signal

    def term(name: str) -> None:
        signalled[name] = len(faults.exit_codes(name))
        faults.signal(name, signal.SIGTERM)

    try:
        started = bus.when(is_event(sid, "call.started"))
        first_final = bus.when(is_final(sid))
        beat = bus.when(lambda s, d: s == subjects.turn_heartbeat(sid))
        _, task = await faults.call([say(S1), say(S2)], sid=sid)
        await asyncio.wait_for(started, 20)

        # Gateway: not ready at once, refuses new calls, keeps the live one.
        term("gateway")
        await asyncio.sleep(0.3)
        assert not await gateway_healthy(info.gateway_url)
        late = await SimulatedCall(
            gateway_url=info.gateway_url,
            public_url=info.public_url,
            auth_token=TOKEN,
            greeting_timeout_s=2,
        ).run([])
        assert late.ended_by == "rejected", late.ended_by

        # ASR: the worker holding the call hands it back at a pause.
        await asyncio.wait_for(first_final, 40)
        claims = [
            e for _, e in bus.events(sid) if e.service == "gateway" and e.name == "asr.claimed"
        ]
        asr = faults.name_of(str(claims[-1].data["worker"]))
        faults.llm._state.chunk_delay_s = 0.05  # a turn that takes a while
        faults.tts.piece_delay_s = 0.1
        term(asr)

        # Agent: the replica answering finishes its turn.
        await asyncio.wait_for(beat, 20)
        hb = next(
            TurnHeartbeat.model_validate_json(d)
            for _, s, d, _ in bus.messages
            if s == subjects.turn_heartbeat(sid)
        )
        agent = faults.name_of(hb.worker_id)
        term(agent)

        # TTS: the replica voicing the first segment finishes it.
        voiced = bus.when(is_event(sid, "tts.first_audio"))
        await asyncio.wait_for(voiced, 20)
        ev = [e for _, e in bus.events(sid) if e.name == "tts.first_audio"][-1]
        tts = faults.name_of(str(ev.data["worker"]))
        term(tts)
        faults.llm._state.chunk_delay_s = 0.002
        faults.tts.piece_delay_s = 0.0

        result = await asyncio.wait_for(task, 90)
        ctx = _ctx(faults, result)
        assert _answered(result, 0), "the turn under way was not finished" + ctx
        assert result.turns[0].finished, ctx
        assert _answered(result, 1), "the call did not go on" + ctx
        reply_turns = {s.turn for s in bus.segments(sid) if s.utterance_id == hb.utterance_id}
        assert len(reply_turns) == 1, reply_turns

        deadline = time.monotonic() + 30
        codes: dict[str, list[int]] = {}
        while time.monotonic() < deadline:
            codes = {n: faults.exit_codes(n)[runs:] for n, runs in signalled.items()}
            if all(codes.values()):
                break
            await asyncio.sleep(0.2)
        assert {n: c[:1] for n, c in codes.items()} == {n: [0] for n in signalled}, (
            f"exit codes {codes}" + ctx
        )
    finally:
        faults.llm._state.chunk_delay_s = 0.002
        faults.tts.piece_delay_s = 0.0
        await nc.close()
