"""Turn-taking measures: barge-in reaction time and false-interruption rate.

Both drive the real gateway call logic (:class:`services.gateway.call.CallSession`, its Silero
VAD and playback queue) over a real NATS server, from Twilio's side of the media stream:
:class:`TwilioLeg` is an in-process Twilio (a real-time 20 ms clock sending caller frames,
Twilio's playback buffer, mark echoes, ``clear``). The WebSocket hop is left out: on loopback
it adds well under a millisecond. The agent's reply (text + audio) is published on the bus as
the agent and TTS would; the caller's words come from the bundled Piper voice.

Public entry points (for ``make bench``)::

    stats = await barge_in_reaction(nats_url, trials=10)       # {"p50_ms", "p95_ms", ...}
    stats = await false_interruption_rate(nats_url)            # {"rate", "interrupted", ...}

The recognizer is either the real local ASR worker, run in-process (``asr="local"``: whisper,
the honest measure of false interruptions), or emulated (``asr="emulated"``: the harness
publishes what a recognizer would, so only the gateway's decision is measured).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

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
from voiceagent.simulator import PlaybackBuffer

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


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation; NaN when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


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

    async def agent_says(self, turn: int, texts: Sequence[str], *, seconds: float = 2.0) -> None:
        """Publish a reply of ``len(texts)`` segments (``seconds`` of audio each), as TTS would."""
        for seq, text in enumerate(texts):
            last = seq == len(texts) - 1
            seg = ReplySegment(call_sid=self.call_sid, turn=turn, seq=seq, text=text, last=last)
            await self.nc.publish(subjects.reply(self.call_sid), seg.to_bytes())
            audio = tone_mulaw(seconds, hz=200.0 + 40 * seq)
            chunks = [audio[i : i + 1600] for i in range(0, len(audio), 1600)]
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


async def _caller_audio(text: str) -> bytes:
    from voiceagent import voices

    return await asyncio.to_thread(voices.synthesize, text)


# ---------------------------------------------------------------- measures


async def barge_in_reaction(
    nats_url: str,
    *,
    trials: int = 10,
    phrase: str = "Wait, stop.",
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Barge-in reaction time over ``trials`` interruptions of a long agent reply.

    Measured from the caller's speech onset in the caller's audio (the first frame above
    -40 dBFS, when Twilio's leg sends it) to Twilio's leg receiving ``clear``. Each trial
    interrupts a new turn 0.6-1.0 s into its audio; the recognizer is emulated (its words
    confirm the interruption). Returns ``{"p50_ms", "p95_ms", "max_ms", "samples_ms",
    "missed"}`` (``missed``: trials with no ``clear`` within 2 s). Target: p95 under 250 ms.
    """
    audio = await _caller_audio(phrase)
    samples: list[float] = []
    missed = 0
    async with bench_call(nats_url, settings=settings) as b:
        for k in range(trials):
            turn = k + 1
            await b.agent_says(turn, ["A long answer that goes on and on."], seconds=6.0)
            await b.wait_playing()
            await asyncio.sleep(0.6 + 0.04 * (k % 10))
            clears = len(b.leg.clears)
            b.leg.cleared.clear()
            onset, _ = b.leg.say(audio)
            t_onset = await onset
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(b.leg.cleared.wait(), 2.0)
            if len(b.leg.clears) > clears:
                samples.append((b.leg.clears[clears] - t_onset) * 1000)
            else:
                missed += 1
            b.leg.hush()
            await b.asr_says(phrase)
            await asyncio.sleep(0.3)
            b.leg.media.clear()
    return {
        "p50_ms": round(percentile(samples, 50), 1),
        "p95_ms": round(percentile(samples, 95), 1),
        "max_ms": round(max(samples), 1) if samples else float("nan"),
        "samples_ms": [round(x, 1) for x in samples],
        "missed": missed,
    }


@dataclass(frozen=True, slots=True)
class FalseSample:
    """A sound that must not interrupt the agent, and what an emulated recognizer says of it."""

    name: str
    audio: bytes
    asr_text: str | None  # emulated recognizer's final text (None: no transcript at all)


async def default_false_set() -> list[FalseSample]:
    """Noise bursts and backchannels ("mm-hm", "okay", "yeah", "uh-huh", "right")."""
    out = [
        FalseSample("noise 300 ms", noise_mulaw(0.3, level=0.08, seed=1), ""),
        FalseSample("noise 800 ms", noise_mulaw(0.8, level=0.05, seed=2), ""),
        FalseSample("thump 60 ms", noise_mulaw(0.06, level=0.3, seed=3), None),
    ]
    for word in ("Mm-hmm.", "Okay.", "Yeah.", "Uh-huh.", "Right."):
        out.append(FalseSample(f"backchannel {word}", await _caller_audio(word), word))
    return out


async def false_interruption_rate(
    nats_url: str,
    *,
    samples: Sequence[FalseSample] | None = None,
    asr: AsrMode = "local",
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Share of noise/backchannel sounds, made over a playing reply, that cut the agent off.

    For each sample a new reply plays; the caller makes the sound; the turn counts as falsely
    interrupted if an ``Interrupt`` is published within 6 s. Also reports how many sounds
    paused playback (``paused``: the fast path fired, then had to be reverted) and whether the
    resumed audio reached Twilio. ``asr="local"`` runs the real local recognizer in process
    (whisper: slower, the honest measure); ``"emulated"`` publishes each sample's ``asr_text``.
    Returns ``{"rate", "interrupted", "paused", "resumed", "total", "details"}``.
    """
    items = list(samples) if samples is not None else await default_false_set()
    interrupted = paused = resumed = 0
    details: list[dict[str, Any]] = []
    async with bench_call(nats_url, settings=settings, asr=asr) as b:
        if asr == "local":
            await asyncio.sleep(1.5)  # the ASR claim
            _, done = b.leg.say(await _caller_audio("Hello."))  # the recognizer's first decode
            await done
            await asyncio.sleep(3.0)
        for k, item in enumerate(items):
            turn = k + 1
            await b.agent_says(turn, ["A reply that the caller listens to."], seconds=7.0)
            await b.wait_playing()
            await asyncio.sleep(0.8)
            clears, before = len(b.leg.clears), len(b.tap.interrupts)
            _, done = b.leg.say(item.audio)
            await done
            if asr == "emulated" and item.asr_text is not None:
                await asyncio.sleep(0.3)
                await b.asr_says(item.asr_text)
            deadline = time.monotonic() + 6.0
            while time.monotonic() < deadline and len(b.tap.interrupts) == before:
                if len(b.leg.clears) > clears and not b.session.playback.paused:
                    break  # reverted
                await asyncio.sleep(0.02)
            was_paused = len(b.leg.clears) > clears
            cut = len(b.tap.interrupts) > before
            b.leg.media.clear()
            await asyncio.sleep(0.3)
            back = bool(b.leg.media) and not cut
            interrupted += cut
            paused += was_paused
            resumed += was_paused and back
            details.append(
                {
                    "sample": item.name,
                    "paused": was_paused,
                    "interrupted": cut,
                    "resumed": was_paused and back,
                }
            )
            # End the turn so the next sample starts on a fresh reply.
            await b.nc.publish(
                subjects.control(b.call_sid), Interrupt(call_sid=b.call_sid, turn=turn).to_bytes()
            )
            await asyncio.sleep(0.2)
    total = len(items)
    return {
        "rate": round(interrupted / total, 3) if total else 0.0,
        "interrupted": interrupted,
        "paused": paused,
        "resumed": resumed,
        "total": total,
        "details": details,
    }


async def run_bench(*, trials: int = 10) -> str:
    """The ``make bench`` rows: barge-in reaction and false interruptions, on a private bus."""
    import shutil
    import tempfile

    from voiceagent.stack import free_port, nats_server_binary, reachable

    port = free_port()
    store = tempfile.mkdtemp(prefix="bench-turn-")
    proc = await asyncio.create_subprocess_exec(
        str(nats_server_binary()),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-js",
        "-sd",
        store,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if reachable("127.0.0.1", port):
                break
            await asyncio.sleep(0.05)
        url = f"nats://127.0.0.1:{port}"
        react = await barge_in_reaction(url, trials=trials)
        rate = await false_interruption_rate(url, asr="local")
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(store, ignore_errors=True)
    target = "met" if react["p95_ms"] is not None and react["p95_ms"] < 250 else "NOT met"
    return "\n".join(
        [
            "turn-taking (private bus, local ASR)",
            "| measure | value |",
            "|---|---|",
            f"| barge-in reaction p50 (speech onset -> clear) | {react['p50_ms']} ms |",
            f"| barge-in reaction p95 (target < 250 ms: {target}) | {react['p95_ms']} ms |",
            f"| barge-ins missed | {react['missed']} of {trials} |",
            f"| false interruptions (noise + backchannels) | {rate['interrupted']}/{rate['total']}"
            f" (rate {rate['rate']}) |",
            f"| paused then resumed | {rate['paused']} paused, {rate['resumed']} resumed |",
        ]
    )


def main() -> None:
    """``python -m voiceagent.bench_turntaking NATS_URL``: print both measures."""
    import sys

    url = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"
    asr: AsrMode = "emulated" if "--emulated" in sys.argv else "local"
    react = asyncio.run(barge_in_reaction(url))
    print(
        f"barge-in reaction: p50 {react['p50_ms']} ms, p95 {react['p95_ms']} ms, "
        f"missed {react['missed']}"
    )
    rate = asyncio.run(false_interruption_rate(url, asr=asr))
    print(
        f"false interruptions ({asr} ASR): {rate['interrupted']}/{rate['total']} "
        f"(rate {rate['rate']}), paused {rate['paused']}, resumed {rate['resumed']}"
    )


if __name__ == "__main__":
    main()
