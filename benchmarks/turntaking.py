"""Turn-taking measures: barge-in reaction time and false-interruption rate.

Both drive the real gateway call logic over a real NATS server from Twilio's side of the media
stream, through the in-process call of :mod:`devkit.call_harness`; the caller's words come from
the bundled Piper voice.

Public entry points (for ``make bench``)::

    stats = await barge_in_reaction(nats_url, trials=10)       # {"p50_ms", "p95_ms", ...}
    stats = await false_interruption_rate(nats_url)            # {"rate", "interrupted", ...}

The recognizer is either the real local ASR worker, run in-process (``asr="local"``: whisper,
the honest measure of false interruptions), or emulated (``asr="emulated"``: the harness
publishes what a recognizer would, so only the gateway's decision is measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from devkit.call_harness import AsrMode, bench_call, noise_mulaw
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
    """``python -m benchmarks.turntaking NATS_URL``: print both measures."""
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
