"""Turn-taking measures: sounds over the agent's speech, barge-in speed, false interruptions.

All drive the real gateway call logic over a real NATS server from Twilio's side of the media
stream, through the in-process call of :mod:`devkit.call_harness` (its Twilio leg plays the
agent's frames in real time, echoes marks, honours ``clear``).

Public entry points (for ``make bench``)::

    calm, cut = await speech_over_agent(nats_url)   # per-trial Trial records (sound_sets())
    print(speech_table(calm, cut))                  # the table of docs/turn-taking.md
    stats = await barge_in_reaction(nats_url, trials=10)       # {"p50_ms", "p95_ms", ...}
    stats = await false_interruption_rate(nats_url)            # {"rate", "interrupted", ...}

``speech_over_agent`` plays a Piper agent sentence and, at one of several points of it, a sound
that must not stop it (40: five backchannels in Piper at two rates and espeak at two rates and
pitches, ten of them under line noise, the "Yes." answers cut out of a real recording, coughs,
a thump, noise bursts) or one that must (22: four interruptions in the same four voices, six
sentences cut out of the real recordings of tests/data). It records what the Twilio leg got
(each ``clear``, each media frame) and played (each 20 ms tick): stops, the gap from a ``clear``
to the next agent frame, the longest silence of the agent, when it fell silent, and whether
what the caller heard is the reply's own frames in order, none repeated or skipped.

The recognizer is either the real local ASR worker, run in-process (``asr="local"``: whisper,
the honest measure of false interruptions), or emulated (``asr="emulated"``: the harness
publishes what a recognizer would, so only the gateway's decision is measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from devkit.call_harness import SPEECH_RMS, AsrMode, bench_call, noise_mulaw, onset_frame
from shared import subjects
from shared.messages import Interrupt
from shared.settings import Settings


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation; NaN when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


async def _caller_audio(text: str) -> bytes:
    from devkit import voices

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
    paused or held playback (``paused``: the fast path fired, then had to be reverted) and
    whether the resumed audio reached Twilio. ``asr="local"`` runs the real local recognizer in
    process (whisper: slower, the honest measure); ``"emulated"`` publishes each sample's
    ``asr_text``. Returns ``{"rate", "interrupted", "paused", "resumed", "total", "details"}``.
    """
    items = list(samples) if samples is not None else await default_false_set()
    interrupted = paused = resumed = 0
    details: list[dict[str, Any]] = []
    async with bench_call(nats_url, settings=settings, asr=asr) as b:
        if asr == "local":
            await _warm_recognizer(b)
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
            held = False  # paused, or held by the soft pause (no clear)
            while time.monotonic() < deadline and len(b.tap.interrupts) == before:
                pb = b.session.playback
                if pb.paused or pb.held:
                    held = True
                elif held or len(b.leg.clears) > clears:
                    break  # reverted
                await asyncio.sleep(0.02)
            was_paused = held or len(b.leg.clears) > clears
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


# ---------------------------------------------------------------- speech over the agent

AGENT_TEXT = (
    "Your appointment is on Tuesday the fourth at ten thirty in the morning with doctor Patel. "
    "Please bring your insurance card, a photo ID, and a list of the medicines you take."
)
BACKCHANNELS = ("Mm-hmm.", "Uh-huh.", "Yeah.", "Okay.", "Right.")
INTERRUPTIONS = ("Sorry, wait.", "No, Tuesday.", "Wait, stop.", "Actually, I need to change it.")
AT_S = (0.5, 1.1, 1.8, 2.6)  # where in the agent's sentence the caller's sound begins
PAD_MS = 120  # silence (or line noise) around each rendered sound
# Cut out of the real recordings of tests/data (file, start s, end s, what is said): the two
# "Yes." answers of the Endgame dialogue, and sentences that would interrupt an agent.
HUMAN_BACKCHANNELS = (
    ("endgame_nagg_nell.wav", 1.40, 2.00, "Yes."),
    ("endgame_nagg_nell.wav", 3.75, 4.35, "Yes."),
)
HUMAN_INTERRUPTIONS = (
    ("endgame_nagg_nell.wav", 11.95, 14.50, "No, not heartily, just less heartily."),
    ("endgame_nagg_nell.wav", 17.55, 19.50, "What are you talking about?"),
    ("endgame_nagg_nell.wav", 22.45, 23.25, "Not now."),
    ("endgame_nagg_nell.wav", 27.85, 28.27, "No."),
    ("beckett.wav", 3.45, 4.30, "No matter."),
    ("clone-test.wav", 1.10, 3.40, "I think that America do it very well."),
)


@dataclass(frozen=True, slots=True)
class Sound:
    """A caller's sound over the agent: its audio and what an emulated recognizer makes of it."""

    name: str
    kind: str  # the table's row: "backchannel", "backchannel+noise", "human", "noise", ...
    audio: bytes  # 8 kHz mu-law
    asr_text: str | None  # the recognizer's final (None: it heard no speech)
    at_s: float = 1.0  # seconds into the agent's audio where it begins


def _mulaw(x: Any) -> bytes:
    from shared.audio import float_to_pcm16, pcm16_to_ulaw

    return pcm16_to_ulaw(float_to_pcm16(np.clip(x, -1.0, 1.0)))


def _padded(x: Any, *, noise_seed: int | None = None) -> bytes:
    from benchmarks.endpointing import line_noise

    pad = np.zeros(8 * PAD_MS, dtype=np.float32)
    y = np.concatenate([pad, np.asarray(x, dtype=np.float32), pad])
    if noise_seed is not None:
        y = y + line_noise(len(y), noise_seed)
    return _mulaw(y)


def cough(seconds: float, *, seed: int, bursts: int = 1) -> Any:
    """A cough-like sound: bursts of low-passed (duller than hiss) noise, sharp attack, fast
    decay."""
    rng = np.random.default_rng(seed)
    n = int(8000 * seconds)
    out = np.zeros(0, dtype=np.float32)
    for _ in range(bursts):
        x = rng.standard_normal(n).astype(np.float32)
        x = np.convolve(x, np.full(4, 0.25, dtype=np.float32), mode="same").astype(np.float32)
        env = np.exp(-np.arange(n, dtype=np.float32) / (n / 4))
        out = np.concatenate([out, 0.35 * x * env, np.zeros(800, dtype=np.float32)])
    return out


def _human(name: str, t0: float, t1: float) -> Any:
    from benchmarks.endpointing import DATA, read_wav, telephone

    raw, rate = read_wav(DATA / name)
    return telephone(raw[int(t0 * rate) : int(t1 * rate)], rate)


def _voices() -> list[Any]:
    from benchmarks.endpointing import Voice

    return [
        Voice("piper", "piper", 1.0),
        Voice("piper-slow", "piper", 1.3),
        Voice("espeak", "espeak", 165),
        Voice("espeak-slow-low", "espeak", 135, pitch=30),
    ]


def sound_sets() -> tuple[bytes, list[Sound], list[Sound]]:
    """The agent's sentence, >= 40 sounds that must not stop it, >= 20 that must (blocking)."""
    from benchmarks.endpointing import Renderer, Voice

    r = Renderer(threads=1)
    agent = _mulaw(r.render(Voice("agent", "piper", 1.0), AGENT_TEXT))
    voices = _voices()
    calm: list[Sound] = []
    k = 0
    for v in voices:
        for w in BACKCHANNELS:
            calm.append(Sound(f"{w} {v.name}", "backchannel", _padded(r.render(v, w)), w))
    for v in (voices[0], voices[2]):
        for w in BACKCHANNELS:
            k += 1
            audio = _padded(r.render(v, w), noise_seed=k)
            calm.append(Sound(f"{w} {v.name}+noise", "backchannel+noise", audio, w))
    for i, (f, t0, t1, text) in enumerate(HUMAN_BACKCHANNELS):
        x = _human(f, t0, t1)
        calm.append(Sound(f"human {text} {i}", "human", _padded(x), text))
        calm.append(Sound(f"human {text} {i}+noise", "human", _padded(x, noise_seed=50 + i), text))
    calm += [
        Sound("cough", "cough/noise", _padded(cough(0.25, seed=1)), ""),
        Sound("cough twice", "cough/noise", _padded(cough(0.2, seed=2, bursts=2)), ""),
        Sound("thump 60 ms", "cough/noise", noise_mulaw(0.06, level=0.3, seed=3), None),
        Sound("noise 300 ms", "cough/noise", noise_mulaw(0.3, level=0.08, seed=4), ""),
        Sound("noise 800 ms", "cough/noise", noise_mulaw(0.8, level=0.05, seed=5), ""),
        # hiss alone, loud (an open line, wind): 500 ms at -30 dBFS
        Sound(
            "line-noise burst",
            "cough/noise",
            _mulaw(np.random.default_rng(9).standard_normal(4000) * 0.03),
            None,
        ),
    ]
    cut: list[Sound] = []
    for v in voices:
        for ph in INTERRUPTIONS:
            cut.append(Sound(f"{ph} {v.name}", "synthesized", _padded(r.render(v, ph)), ph))
    for f, t0, t1, text in HUMAN_INTERRUPTIONS:
        cut.append(Sound(f"human {text}", "human", _padded(_human(f, t0, t1)), text))

    def spread(xs: list[Sound]) -> list[Sound]:
        return [replace(x, at_s=AT_S[i % len(AT_S)]) for i, x in enumerate(xs)]

    return agent, spread(calm), spread(cut)


def last_sound_frame(mulaw: bytes) -> int:
    """Index of the last 20 ms frame of ``mulaw`` that carries sound (as ``onset_frame``)."""
    from shared.audio import frames, ulaw_to_float

    loud = [
        i
        for i, f in enumerate(frames(mulaw))
        if float(np.sqrt(np.mean(ulaw_to_float(f) ** 2))) >= SPEECH_RMS
    ]
    return loud[-1] if loud else 0


@dataclass(slots=True)
class Trial:
    """What the caller's Twilio leg saw during one sound over the agent."""

    sound: Sound
    clears: list[float]  # clear times, s after the sound's onset
    resume_gaps_ms: list[float]  # per clear: clear -> next agent media frame at the leg
    longest_silence_ms: float  # the longest stretch without agent audio while the turn was on
    stopped_ms: float | None  # onset -> the last agent frame heard (None: still playing)
    back_ms: float | None  # the sound's end -> the agent's audio heard again (None: not back)
    first_silent_ms: float | None  # onset -> the end of the last agent frame before the first
    # silence of >= 100 ms (the first stop; later audio is ``heard_again``)
    interrupted: bool  # the gateway gave the turn up (Interrupt on the bus)
    heard_again: bool  # agent audio played again after >= 100 ms of silence, before the end
    exact: bool  # what the caller heard is the reply's own frames, in order, none twice or lost


async def _trial(
    b: Any, turn: int, agent: bytes, sound: Sound, *, cut: bool, emulate: bool = True
) -> Trial:
    leg = b.leg
    for _ in range(100):  # the last turn's audio is gone from Twilio's buffer
        if not leg.buffer.buffered_bytes:
            break
        await asyncio.sleep(0.02)
    leg.media.clear()
    i_clear, i_play, i_int = len(leg.clears), len(leg.played), len(b.tap.interrupts)
    await b.agent_says(turn, [AGENT_TEXT], audio=[agent])
    await b.wait_playing()
    await asyncio.sleep(sound.at_s)
    onset, done = leg.say(sound.audio)
    asr = asyncio.create_task(
        b.asr_hears(sound.asr_text, onset=onset, done=done) if emulate else asyncio.sleep(0)
    )
    t_onset = await onset
    t_done = await done
    deadline = t_done + (3.5 if cut else 3.0)
    while time.monotonic() < deadline:
        if len(b.tap.interrupts) > i_int:
            await asyncio.sleep(0.3)  # anything still playing after the decision counts
            break
        recent = [t for t, _ in leg.played[i_play:] if t > time.monotonic() - 0.4]
        if not cut and time.monotonic() > t_done + 0.5 and len(recent) >= 18:
            break  # the agent plays on (again)
        await asyncio.sleep(0.02)
    t_end = time.monotonic()
    await asr
    interrupted = len(b.tap.interrupts) > i_int
    clears = [t for t in leg.clears[i_clear:] if t <= t_end]
    arrivals = [t for t, _ in leg.media]
    gaps: list[float] = []
    for c in clears:
        nxt = [t for t in arrivals if c < t <= t_end]
        if nxt:
            gaps.append((nxt[0] - c) * 1000)
    ticks = [(t, a) for t, a in leg.played[i_play:] if t <= t_end]
    times = [t for t, _ in ticks if t >= t_onset - 0.02] or [t_onset]
    silence = max(
        [(y - x) * 1000 - 20 for x, y in itertools.pairwise(times)]
        + [(t_end - times[-1]) * 1000 - 20 if not interrupted else 0.0],
        default=0.0,
    )
    first_gap = next((x for x, y in itertools.pairwise(times) if (y - x) * 1000 - 20 >= 100), None)
    heard_again = first_gap is not None
    # The sound's end: its last frame above the onset level, on the leg's clock.
    t_end_sound = t_onset + (last_sound_frame(sound.audio) - onset_frame(sound.audio) + 1) * 0.02
    back = next((y for x, y in itertools.pairwise(times) if (y - x) * 1000 - 20 >= 100), None)
    back_ms = None if back is None else max(0.0, (back - t_end_sound) * 1000)
    stopped = None
    if interrupted or t_end - times[-1] > 0.1:
        stopped = (times[-1] - t_onset) * 1000 + 20
    first = stopped if first_gap is None else (first_gap - t_onset) * 1000 + 20
    heard = b"".join(a for _, a in ticks)
    # End the turn (if the gateway has not) so the next sound starts on a fresh reply.
    await b.nc.publish(
        subjects.control(b.call_sid), Interrupt(call_sid=b.call_sid, turn=turn).to_bytes()
    )
    await asyncio.sleep(0.15)
    return Trial(
        sound=sound,
        clears=[round(c - t_onset, 3) for c in clears],
        resume_gaps_ms=[round(g, 1) for g in gaps],
        longest_silence_ms=round(max(0.0, silence), 1),
        stopped_ms=None if stopped is None else round(stopped, 1),
        first_silent_ms=None if first is None else round(first, 1),
        back_ms=None if back_ms is None else round(back_ms, 1),
        interrupted=interrupted,
        heard_again=heard_again,
        exact=agent.startswith(heard),
    )


async def speech_over_agent(
    nats_url: str,
    *,
    calm: Sequence[Sound] | None = None,
    cut: Sequence[Sound] | None = None,
    settings: Settings | None = None,
    asr: AsrMode = "emulated",
) -> tuple[list[Trial], list[Trial]]:
    """Every sound of ``calm`` (must not stop the agent) and ``cut`` (must), one agent turn each,
    on one call; the recognizer emulated in time (:meth:`TurnBench.asr_hears`) or, with
    ``asr="local"``, the real local ASR worker hearing the caller's audio."""
    agent, default_calm, default_cut = await asyncio.to_thread(sound_sets)
    calm = default_calm if calm is None else calm
    cut = default_cut if cut is None else cut
    out_calm: list[Trial] = []
    out_cut: list[Trial] = []
    emulate = asr == "emulated"
    async with bench_call(nats_url, settings=settings, asr=asr) as b:
        if not emulate:
            await _warm_recognizer(b)
        turn = 0
        for s in calm:
            turn += 1
            out_calm.append(await _trial(b, turn, agent, s, cut=False, emulate=emulate))
        for s in cut:
            turn += 1
            out_cut.append(await _trial(b, turn, agent, s, cut=True, emulate=emulate))
    return out_calm, out_cut


async def _warm_recognizer(b: Any) -> None:
    """The ASR claim and the recognizer's first decode, before anything is measured."""
    await asyncio.sleep(1.5)
    _, done = b.leg.say(await _caller_audio("Hello."))
    await done
    await asyncio.sleep(3.0)


def _ms(xs: Sequence[float], q: float) -> str:
    return "-" if not xs else f"{percentile(xs, q):.0f}"


def speech_table(calm: Sequence[Trial], cut: Sequence[Trial], *, asr: AsrMode = "emulated") -> str:
    """The turn-taking table of sounds over the agent (see docs/turn-taking.md)."""
    heard = (
        "the local recognizer (whisper) hearing the caller"
        if asr == "local"
        else "emulated recognizer in time"
    )
    lines = [
        f"sounds over agent speech ({heard}; Twilio leg echoes marks)",
        "| must not stop | trials | stopped (clear) | interrupted | resume gap p50/max ms"
        " | silence > 100 ms | silence p50/max ms | sound end->agent back p50/max ms | exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    kinds = [*dict.fromkeys(t.sound.kind for t in calm), "all"]
    for k in kinds:
        ts = [t for t in calm if k in ("all", t.sound.kind)]
        gaps = [g for t in ts for g in t.resume_gaps_ms]
        sil = [t.longest_silence_ms for t in ts]
        back = [t.back_ms for t in ts if t.back_ms is not None]
        stops = sum(1 for t in ts if t.clears)
        unresumed = sum(1 for t in ts if t.clears and len(t.resume_gaps_ms) < len(t.clears))
        lines.append(
            f"| {k} | {len(ts)} | {stops} ({unresumed} not resumed) | "
            f"{sum(t.interrupted for t in ts)} | {_ms(gaps, 50)}/{_ms(gaps, 100)} | "
            f"{sum(1 for x in sil if x > 100)} | {_ms(sil, 50)}/{_ms(sil, 100)} | "
            f"{_ms(back, 50)}/{_ms(back, 100)} | {sum(t.exact for t in ts)}/{len(ts)} |"
        )
    lines += [
        "",
        "| must stop | trials | onset->clear p50/p95/max ms | onset->silent p50/p95/max ms"
        " | missed | agent heard again | onset->last agent frame p50/p95/max ms | exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in [*dict.fromkeys(t.sound.kind for t in cut), "all"]:
        ts = [t for t in cut if k in ("all", t.sound.kind)]
        clr = [t.clears[0] * 1000 for t in ts if t.clears]
        sil = [t.first_silent_ms for t in ts if t.first_silent_ms is not None]
        last = [t.stopped_ms for t in ts if t.stopped_ms is not None]
        missed = sum(1 for t in ts if not t.interrupted or t.stopped_ms is None)
        lines.append(
            f"| {k} | {len(ts)} | {_ms(clr, 50)}/{_ms(clr, 95)}/{_ms(clr, 100)} | "
            f"{_ms(sil, 50)}/{_ms(sil, 95)}/{_ms(sil, 100)} | {missed} | "
            f"{sum(t.heard_again for t in ts)} | "
            f"{_ms(last, 50)}/{_ms(last, 95)}/{_ms(last, 100)} | "
            f"{sum(t.exact for t in ts)}/{len(ts)} |"
        )
    return "\n".join(lines)


async def _private_bus() -> tuple[str, Any, str]:
    import tempfile

    from voiceagent.ports import free_port, reachable
    from voiceagent.stack import nats_server_binary

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
    for _ in range(100):
        if reachable("127.0.0.1", port):
            break
        await asyncio.sleep(0.05)
    return f"nats://127.0.0.1:{port}", proc, store


async def run_bench() -> str:
    """The ``make bench`` rows: sounds over the agent (stops, resumes, barge-in speed) heard by
    the real local recognizer, and false interruptions through it, on a private bus."""
    import shutil

    url, proc, store = await _private_bus()
    try:
        calm, cut = await speech_over_agent(url, asr="local")
        rate = await false_interruption_rate(url, asr="local")
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(store, ignore_errors=True)
    return "\n".join(
        [
            "turn-taking (private bus)",
            speech_table(calm, cut, asr="local"),
            "",
            "| local recognizer (whisper in process) | value |",
            "|---|---|",
            f"| false interruptions (noise + backchannels) | {rate['interrupted']}/{rate['total']}"
            f" (rate {rate['rate']}) |",
            f"| paused then resumed | {rate['paused']} paused, {rate['resumed']} resumed |",
        ]
    )


def main() -> None:
    """``python -m benchmarks.turntaking [NATS_URL] [--verbose] [--no-local] [--emulated]``: the
    table (``--no-local``: sounds over the agent only; ``--emulated``: with the recognizer
    emulated in time instead of the local one)."""
    import sys

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asr: AsrMode = "emulated" if "--emulated" in sys.argv else "local"
    if "--no-local" not in sys.argv and not args and asr == "local":
        print(asyncio.run(run_bench()))
        return

    async def go() -> None:
        import shutil

        url, proc, store = (args[0], None, "") if args else await _private_bus()
        try:
            calm, cut = await speech_over_agent(url, asr=asr)
        finally:
            if proc is not None:
                proc.terminate()
                await proc.wait()
                shutil.rmtree(store, ignore_errors=True)
        print(speech_table(calm, cut, asr=asr))
        if "--verbose" in sys.argv:
            for t in [*calm, *cut]:
                print(
                    f"{t.sound.name:40s} at {t.sound.at_s:.1f}s clears {t.clears} "
                    f"gaps {t.resume_gaps_ms} silence {t.longest_silence_ms} "
                    f"first silent {t.first_silent_ms} back {t.back_ms} stopped {t.stopped_ms} "
                    f"cut {t.interrupted} again {t.heard_again} "
                    f"exact {t.exact}"
                )

    asyncio.run(go())


if __name__ == "__main__":
    main()
