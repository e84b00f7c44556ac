"""An in-process call for turn-taking tests and benches: the gateway's logic, Twilio's side.

:class:`TurnBench` drives the real gateway call logic (:class:`services.gateway.call.CallSession`,
its Silero VAD and playback queue) over a real NATS server, from Twilio's side of the media
stream: :class:`TwilioLeg` is an in-process Twilio (a real-time 20 ms clock sending caller
frames, Twilio's playback buffer, mark echoes, ``clear``). The WebSocket hop is left out: on
loopback it adds well under a millisecond. The agent's reply (text + audio) is published on the
bus as the agent and TTS would (:meth:`TurnBench.agent_says`); the recognizer is either emulated
(:meth:`TurnBench.asr_says`) or the real local ASR worker in process
(``bench_call(..., asr="local")``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from devkit.simulator import PlaybackBuffer
from services.gateway.call import CallSession
from services.gateway.call_control import CallControl
from services.gateway.turntaking.voice_activity import VadPool
from shared import headers as H
from shared import subjects
from shared.audio import (
    FRAME_BYTES,
    MULAW_SILENCE,
    SAMPLE_RATE,
    float_to_pcm16,
    pcm16_to_ulaw8k,
    ulaw_to_float,
)
from shared.audio import frames as split_frames
from shared.messages import (
    Interrupt,
    Played,
    Prompt,
    ReplySegment,
    SpeechStarted,
    SpeechStopped,
    Transcript,
    parse_control,
)
from shared.settings import Settings

FRAME_S = 0.02
SPEECH_RMS = 0.01  # a caller frame above this (about -40 dBFS) is speech (onset measurement)
SILENCE = bytes([MULAW_SILENCE]) * FRAME_BYTES

AsrMode = Literal["local", "emulated"]


def tone_mulaw(seconds: float, *, hz: float = 220.0, level: float = 0.2) -> bytes:
    """A steady tone standing in for agent speech (its content does not matter here)."""
    t = np.arange(int(SAMPLE_RATE * seconds), dtype=np.float32) / SAMPLE_RATE
    x = (np.sin(2 * np.pi * hz * t) * level).astype(np.float32)
    return pcm16_to_ulaw8k(float_to_pcm16(x), rate=SAMPLE_RATE)


def noise_mulaw(seconds: float, *, level: float = 0.05, seed: int = 0) -> bytes:
    """White noise (RMS ``level`` of full scale): line noise, a rustle."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(int(SAMPLE_RATE * seconds)) * level).astype(np.float32)
    return pcm16_to_ulaw8k(float_to_pcm16(np.clip(x, -1, 1)), rate=SAMPLE_RATE)


def onset_frame(mulaw: bytes) -> int:
    """Index of the first 20 ms frame of ``mulaw`` that carries sound (speech onset)."""
    for i, f in enumerate(split_frames(mulaw)):
        x = ulaw_to_float(f)
        if x.size and float(np.sqrt(np.mean(x * x))) >= SPEECH_RMS:
            return i
    return 0


@dataclass
class _Speech:
    frames: list[bytes]
    onset: int
    onset_sent: asyncio.Future[float]
    done: asyncio.Future[float]
    sent: int = 0


@dataclass
class TwilioLeg:
    """Twilio's side of one call's media stream, in process (see the module docstring)."""

    session: CallSession | None = None
    buffer: PlaybackBuffer = field(default_factory=PlaybackBuffer)
    clears: list[float] = field(default_factory=list)
    media: list[tuple[float, int]] = field(default_factory=list)  # (arrival, bytes)
    marks: list[str] = field(default_factory=list)  # echoed, in order
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    cleared: asyncio.Event = field(default_factory=asyncio.Event)
    heard: bytearray = field(default_factory=bytearray)
    # Every 20 ms tick that played agent audio: (when, the bytes played). What the caller heard,
    # in order: a frame repeated or skipped after a pause shows here.
    played: list[tuple[float, bytes]] = field(default_factory=list)
    _echo: list[str] = field(default_factory=list)
    _speech: _Speech | None = None
    _chunk: int = 0

    async def receive(self, text: str) -> None:
        """What the gateway sends to Twilio."""
        msg = json.loads(text)
        now = time.monotonic()
        if msg["event"] == "media":
            audio = base64.b64decode(msg["media"]["payload"])
            self.media.append((now, len(audio)))
            self.buffer.add_audio(audio)
        elif msg["event"] == "mark":
            self._echo += self.buffer.add_mark(msg["mark"]["name"])
        elif msg["event"] == "clear":
            self.clears.append(now)
            self.cleared.set()
            self._echo += self.buffer.clear()

    async def close(self) -> None:
        """The gateway closed the stream."""
        self.closed.set()

    def say(self, mulaw: bytes) -> tuple[asyncio.Future[float], asyncio.Future[float]]:
        """Start sending ``mulaw`` as the caller; futures: onset sent, last frame sent."""
        loop = asyncio.get_running_loop()
        fr = [f.ljust(FRAME_BYTES, bytes([MULAW_SILENCE])) for f in split_frames(mulaw)]
        sp = _Speech(fr, onset_frame(mulaw), loop.create_future(), loop.create_future())
        self._speech = sp
        return sp.onset_sent, sp.done

    def hush(self) -> None:
        """The caller stops talking now."""
        sp, self._speech = self._speech, None
        if sp is not None and not sp.done.done():
            sp.done.set_result(time.monotonic())

    async def tick(self) -> None:
        """20 ms of the call: one caller frame to the gateway, 20 ms of agent audio played."""
        session = self.session
        assert session is not None
        frame = SILENCE
        sp = self._speech
        if sp is not None:
            frame = sp.frames[sp.sent]
            if sp.sent == sp.onset and not sp.onset_sent.done():
                sp.onset_sent.set_result(time.monotonic())
            sp.sent += 1
            if sp.sent >= len(sp.frames):
                self._speech = None
                if not sp.done.done():
                    sp.done.set_result(time.monotonic())
        self._chunk += 1
        await session.on_media(frame, str(self._chunk), str((self._chunk - 1) * 20))
        played, due = self.buffer.play(FRAME_BYTES)
        self.heard += played
        if played:
            self.played.append((time.monotonic(), played))
        for name in [*self._echo, *due]:
            self.marks.append(name)
            await session.on_mark(name)
        self._echo.clear()

    async def run(self) -> None:
        """The real-time clock (drift-free; a stalled process resumes rather than bursts)."""
        loop = asyncio.get_running_loop()
        t0, k = loop.time(), 0
        while not self.closed.is_set():
            k += 1
            delay = t0 + k * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:
                t0, k = loop.time(), 0
            await self.tick()


@dataclass
class BusTap:
    """Control messages of one call, as seen on the bus (with arrival times)."""

    interrupts: list[tuple[float, Interrupt]] = field(default_factory=list)
    played: list[Played] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    other: list[Any] = field(default_factory=list)

    async def on_control(self, msg: Msg) -> None:
        """Subscription callback."""
        m = parse_control(msg.data)
        if isinstance(m, Interrupt):
            self.interrupts.append((time.monotonic(), m))
        elif isinstance(m, Played):
            self.played.append(m)
        elif isinstance(m, Prompt):
            self.prompts.append(m)
        else:
            self.other.append(m)


class TurnBench:
    """One call: a :class:`CallSession` on the bus, Twilio's leg in process, agent/ASR helpers."""

    def __init__(self, *, nc: NATS, settings: Settings, vad_pool: VadPool | None) -> None:
        self.nc = nc
        self.settings = settings
        self.call_sid = "CA" + uuid.uuid4().hex
        self.leg = TwilioLeg()
        self.tap = BusTap()
        self.session = CallSession(
            nc=nc,
            settings=settings,
            call_sid=self.call_sid,
            stream_sid="MZ" + uuid.uuid4().hex,
            gateway_id="bench",
            send=self.leg.receive,
            close=self.leg.close,
            vad_pool=vad_pool,
            call_control=CallControl.from_settings(settings),
        )
        self.leg.session = self.session
        self._utterance = 1000
        self._clock: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe the tap, start the session and Twilio's clock."""
        await self.nc.subscribe(subjects.control(self.call_sid), cb=self.tap.on_control)
        await self.session.start()
        await self.nc.flush()
        self._clock = asyncio.create_task(self.leg.run())

    async def stop(self) -> None:
        """Twilio's ``stop``: the session ends."""
        self.leg.closed.set()
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
        await self.session.end("stop")

    async def agent_says(
        self,
        turn: int,
        texts: Sequence[str],
        *,
        seconds: float = 2.0,
        audio: Sequence[bytes] | None = None,
    ) -> None:
        """Publish a reply of ``len(texts)`` segments, as TTS would: ``audio`` (one mu-law clip a
        segment) or a tone of ``seconds`` each."""
        for seq, text in enumerate(texts):
            last = seq == len(texts) - 1
            seg = ReplySegment(call_sid=self.call_sid, turn=turn, seq=seq, text=text, last=last)
            await self.nc.publish(subjects.reply(self.call_sid), seg.to_bytes())
            if audio is not None:
                audio_seg = audio[seq]
            else:
                audio_seg = tone_mulaw(seconds, hz=200.0 + 40 * seq)
            chunks = [audio_seg[i : i + 1600] for i in range(0, len(audio_seg), 1600)]
            for i, chunk in enumerate(chunks):
                hdrs = {
                    H.TURN: str(turn),
                    H.SEG: str(seq),
                    H.CHUNK: str(i),
                    H.LAST: "1" if i == len(chunks) - 1 else "0",
                }
                await self.nc.publish(subjects.audio_out(self.call_sid), chunk, headers=hdrs)
        await self.nc.flush()

    async def asr_says(self, text: str | None, *, final: bool = True) -> int:
        """Emulate the recognizer: speech started/stopped, then ``text`` (None: no transcript)."""
        self._utterance += 1
        u = self._utterance
        sid = self.call_sid
        subj = subjects.transcript(sid)
        await self.nc.publish(
            subj, SpeechStarted(call_sid=sid, utterance_id=u, audio_ms=0).to_bytes()
        )
        await self.nc.publish(
            subj, SpeechStopped(call_sid=sid, utterance_id=u, audio_ms=0, speech_ms=0).to_bytes()
        )
        if text is not None:
            tr = Transcript(call_sid=sid, utterance_id=u, text=text, is_final=final)
            await self.nc.publish(subj, tr.to_bytes())
        await self.nc.flush()
        return u

    async def asr_hears(
        self,
        text: str | None,
        *,
        onset: Awaitable[float],
        done: Awaitable[float],
        start_s: float = 0.25,
        stop_s: float = 0.3,
        decode_s: float = 0.5,
    ) -> None:
        """Emulate a recognizer hearing the caller's sound in time: speech started ``start_s``
        after ``onset``, stopped ``stop_s`` after the sound ``done`` (its endpointing pause), its
        final ``text`` ``decode_s`` later (None: the recognizer heard no speech at all)."""
        if text is None:
            return
        self._utterance += 1
        u = self._utterance
        sid = self.call_sid
        subj = subjects.transcript(sid)
        t_onset = await onset
        await asyncio.sleep(max(0.0, t_onset + start_s - time.monotonic()))
        await self.nc.publish(
            subj, SpeechStarted(call_sid=sid, utterance_id=u, audio_ms=0).to_bytes()
        )
        t_done = await done
        await asyncio.sleep(max(0.0, t_done + stop_s - time.monotonic()))
        await self.nc.publish(
            subj, SpeechStopped(call_sid=sid, utterance_id=u, audio_ms=0, speech_ms=0).to_bytes()
        )
        await asyncio.sleep(decode_s)
        tr = Transcript(call_sid=sid, utterance_id=u, text=text, is_final=True)
        await self.nc.publish(subj, tr.to_bytes())
        await self.nc.flush()

    async def wait_playing(self, timeout_s: float = 5.0) -> None:
        """Until agent audio reaches Twilio."""
        deadline = time.monotonic() + timeout_s
        while not self.leg.media:
            if time.monotonic() > deadline:
                raise TimeoutError("no agent audio reached Twilio")
            await asyncio.sleep(FRAME_S)


@contextlib.asynccontextmanager
async def bench_call(
    nats_url: str,
    *,
    settings: Settings | None = None,
    vad_pool: VadPool | None = None,
    asr: AsrMode = "emulated",
    vad: bool = True,
) -> AsyncIterator[TurnBench]:
    """A started :class:`TurnBench` (and, with ``asr="local"``, an in-process ASR worker).

    ``vad_pool``: share one across calls (else one is made); ``vad=False``: no VAD at all.
    """
    import nats

    s = settings or Settings(_env_file=None, nats_url=nats_url)
    own_pool = vad and vad_pool is None
    pool = vad_pool if vad else None
    if own_pool:
        pool = VadPool(threads=1, keep_idle=1)
        await pool.warm_up()
    nc = await nats.connect(nats_url)
    worker_stack: contextlib.AsyncExitStack = contextlib.AsyncExitStack()
    try:
        if asr == "local":
            await worker_stack.enter_async_context(_local_asr(s))
        bench = TurnBench(nc=nc, settings=s, vad_pool=pool)
        await bench.start()
        try:
            yield bench
        finally:
            await bench.stop()
    finally:
        await worker_stack.aclose()
        await nc.drain()
        if own_pool and pool is not None:
            pool.close()


@contextlib.asynccontextmanager
async def _local_asr(settings: Settings) -> AsyncIterator[None]:
    from services.asr.providers.select import make_provider
    from services.asr.worker import AsrWorker
    from shared.bus import make_broker

    s = settings.model_copy(update={"asr_provider": "local"})
    provider = make_provider(s)
    await provider.warm_up()
    broker = make_broker(s, name="bench-asr")
    worker = AsrWorker(settings=s, provider=provider, broker=broker)
    worker.attach()
    await broker.start()
    await worker.start()
    try:
        yield
    finally:
        await worker.stop()
        await broker.stop()
        await provider.aclose()
