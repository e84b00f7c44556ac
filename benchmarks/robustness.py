"""Robustness evaluation: callers we never tested with (voices, levels, noise, line, timing).

Every condition is caller audio built here, offline: the bundled Piper voice at other speeds
and variabilities, espeak-ng voices (``espeakng-loader``: en-us, en-gb, other pitch and speed),
levels from quiet to clipping, white / pink noise, mains hum and babble under the speech, the
telephone band (300-3400 Hz), 2 % of 20 ms frames lost, and timing (talking over the greeting,
pauses mid-sentence, a long silence first, one-word answers), plus noise with no speech at all.

Two ways to run it:

- :func:`run_asr` feeds each condition to the local recognizer in process, faster than real
  time (the words: WER, utterance splits, false transcripts on noise);
- :func:`run_calls` places each condition as a Twilio-faithful call
  (:class:`devkit.simulator.SimulatedCall`) against a whole :class:`voiceagent.stack.Stack`
  on a private nats-server: WER of the final transcripts, whether a reply came, cut-offs
  (the agent answered before the caller finished, or one sentence became several turns),
  false transcripts and turns on noise, voice-to-voice latency.

``python -m benchmarks.robustness [--asr-only] [--only NAME,...]`` prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, cast

import numpy as np

from devkit.caller_audio import (
    QUESTION,
    SENTENCE,
    SHORT_ANSWERS,
    VOICES,
    Samples,
    babble,
    band_limit,
    dropouts,
    hum,
    pink,
    set_level,
    silence,
    speech_rms,
    to_mulaw,
    white,
)
from shared.audio import FRAME_BYTES, SAMPLE_RATE, ulaw_to_float

_FRAME = FRAME_BYTES  # 20 ms at 8 kHz

# ---------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Utterance:
    """One thing the caller says: clean audio (8 kHz float) and the words (``""``: none)."""

    text: str
    audio: Samples


@dataclass(frozen=True)
class Condition:
    """A caller: what they say, with which distortion, noise bed and timing.

    ``bed``: continuous background (unit RMS, looped) mixed into every frame of the call at
    ``bed_db`` relative to the speech level (SNR = ``-bed_db``), or at ``bed_dbfs`` absolute
    when there is no speech. ``over_greeting``: the first utterance starts with the stream.
    """

    name: str
    axis: str
    utterances: tuple[Utterance, ...]
    bed: Samples | None = None
    bed_dbfs: float = -90.0
    over_greeting: bool = False
    noise_only: bool = False
    note: str = ""
    dtmf_during: str = ""  # keys pressed 0.8 s into the first utterance

    @property
    def said(self) -> str:
        """All the words the caller said."""
        return " ".join(u.text for u in self.utterances if u.text)


def _speech(
    text: str,
    voice: str = "piper",
    *,
    transform: Callable[[Samples], Samples] | None = None,
    level: float = -20.0,
) -> Utterance:
    x = set_level(VOICES[voice](text), level)
    if transform is not None:
        x = transform(x)
    return Utterance(text=text, audio=np.clip(x, -1.0, 1.0).astype(np.float32))


def _with_bed(name: str, axis: str, bed: Samples, snr_db: float, note: str = "") -> Condition:
    u = _speech(SENTENCE)
    dbfs = 20 * np.log10(max(speech_rms(u.audio), 1e-9)) - snr_db
    return Condition(name, axis, (u,), bed=bed, bed_dbfs=float(dbfs), note=note)


def _voice_condition(voice: str) -> Condition:
    return Condition(f"voice:{voice}", "voice", (_speech(SENTENCE, voice),))


def _short_condition(answer: str) -> Condition:
    return Condition(f"short:{answer.strip('.').lower()}", "short", (_speech(answer),))


def _noise_only_condition(
    key: str, make: Callable[[int], Samples], dbfs: float, n: int
) -> Condition:
    return Condition(
        f"noise-only:{key}",
        "noise-only",
        (Utterance("", silence(5000)),),
        bed=make(n),
        bed_dbfs=dbfs,
        noise_only=True,
    )


def build_conditions(names: Sequence[str] | None = None) -> list[Condition]:
    """Every condition (or those named), audio synthesized now (CPU: a few seconds)."""
    n_bed = SAMPLE_RATE * 20
    makers: dict[str, Callable[[], Condition]] = {
        "baseline": lambda: Condition("baseline", "reference", (_speech(SENTENCE),)),
        **{f"voice:{v}": partial(_voice_condition, v) for v in VOICES if v != "piper"},
        "level:quiet-40dBFS": lambda: Condition(
            "level:quiet-40dBFS", "level", (_speech(SENTENCE, level=-40.0),), note="-20 dB"
        ),
        "level:quiet-45dBFS": lambda: Condition(
            "level:quiet-45dBFS", "level", (_speech(SENTENCE, level=-45.0),), note="-25 dB"
        ),
        "level:loud-clipping": lambda: Condition(
            "level:loud-clipping", "level", (_speech(SENTENCE, level=-3.0),), note="clipped"
        ),
        "noise:white-20dB": lambda: _with_bed("noise:white-20dB", "noise", white(n_bed), 20),
        "noise:white-10dB": lambda: _with_bed("noise:white-10dB", "noise", white(n_bed), 10),
        "noise:pink-20dB": lambda: _with_bed("noise:pink-20dB", "noise", pink(n_bed), 20),
        "noise:pink-10dB": lambda: _with_bed("noise:pink-10dB", "noise", pink(n_bed), 10),
        "noise:hum-60Hz": lambda: _with_bed("noise:hum-60Hz", "noise", hum(n_bed), 15),
        "noise:babble-15dB": lambda: _with_bed("noise:babble-15dB", "noise", babble(n_bed), 15),
        "noise:babble-25dB": lambda: _with_bed(
            "noise:babble-25dB", "noise", babble(n_bed), 25, note="a TV across the room"
        ),
        "line:telephone-band": lambda: Condition(
            "line:telephone-band", "line", (_speech(SENTENCE, transform=band_limit),)
        ),
        "line:dropouts-2pct": lambda: Condition(
            "line:dropouts-2pct", "line", (_speech(SENTENCE, transform=dropouts),)
        ),
        "timing:over-greeting": lambda: Condition(
            "timing:over-greeting", "timing", (_speech(QUESTION),), over_greeting=True
        ),
        "timing:mid-pauses": lambda: Condition(
            "timing:mid-pauses",
            "timing",
            (
                Utterance(
                    SENTENCE,
                    np.concatenate(
                        [
                            _speech("I would like to book").audio,
                            silence(700),
                            _speech("an appointment").audio,
                            silence(900),
                            _speech("for next Tuesday.").audio,
                        ]
                    ),
                ),
            ),
            note="700+900 ms pauses",
        ),
        "timing:dtmf-during-speech": lambda: Condition(
            "timing:dtmf-during-speech",
            "timing",
            (_speech(QUESTION),),
            dtmf_during="1",
            note="key 1 pressed 0.8 s into the question",
        ),
        "timing:long-silence-first": lambda: Condition(
            "timing:long-silence-first",
            "timing",
            (Utterance(QUESTION, np.concatenate([silence(8000), _speech(QUESTION).audio])),),
        ),
        **{f"short:{a.strip('.').lower()}": partial(_short_condition, a) for a in SHORT_ANSWERS},
        "short:yes-espeak": lambda: Condition(
            "short:yes-espeak", "short", (_speech("Yes.", "espeak-gb-high"),)
        ),
        "short:okay-espeak": lambda: Condition(
            "short:okay-espeak", "short", (_speech("Okay.", "espeak-us"),)
        ),
        "short:bye-espeak": lambda: Condition(
            "short:bye-espeak", "short", (_speech("Bye.", "espeak-gb-high"),)
        ),
        **{
            f"noise-only:{k}": partial(_noise_only_condition, k, f, lvl, n_bed)
            for k, f, lvl in (
                ("white-35dBFS", white, -35.0),
                ("pink-30dBFS", pink, -30.0),
                ("hum-30dBFS", hum, -30.0),
                ("babble-30dBFS", babble, -30.0),
            )
        },
    }
    chosen = list(makers) if not names else [n for n in makers if n in set(names)]
    unknown = set(names or ()) - set(makers)
    if unknown:
        raise ValueError(f"unknown condition(s): {', '.join(sorted(unknown))}")
    return [makers[n]() for n in chosen]


def render(c: Condition, u: Utterance, *, offset: int = 0) -> Samples:
    """``u`` as the caller's line carries it: the background bed mixed in (from ``offset``)."""
    if c.bed is None:
        return u.audio
    n = len(u.audio)
    reps = np.tile(c.bed, n // len(c.bed) + 2)
    start = offset % len(c.bed)
    return np.clip(u.audio + reps[start : start + n] * 10 ** (c.bed_dbfs / 20), -1, 1).astype(
        np.float32
    )


# ---------------------------------------------------------------- scoring


@lru_cache(maxsize=1)
def _normalizer() -> Callable[[str], str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    return cast(Callable[[str], str], EnglishTextNormalizer())


def words(text: str) -> list[str]:
    """Words as whisper's English normalizer writes them ("Dr." = "doctor", "fourth" = "4th",
    "nineteen eighty two" = "1982"): spelling is not an error."""
    return _normalizer()(text).split()


def wer(ref: str, hyp: str) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words."""
    r, h = words(ref), words(hyp)
    if not r:
        return float(len(h))
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
            prev, d[j] = d[j], cur
    return d[len(h)] / len(r)


@dataclass
class Row:
    """One condition's outcome."""

    name: str
    axis: str
    said: str
    heard: str = ""
    finals: int = 0  # non-empty final transcripts
    replied: bool | None = None  # a reply to the caller (not the greeting) came back
    cut: bool = False  # answered before the caller finished, or one sentence split in turns
    latency_ms: float | None = None
    noise_only: bool = False
    error: str = ""
    note: str = ""
    agent: str = ""  # what the agent said after the greeting
    empty_finals: int = 0  # utterances the recognizer heard but found no words in
    # --asr-only: every turn ended at a pause, not only when the audio did (background talk
    # can hold a turn open; the stream's end then forces it, which a call never gets)
    ended: bool | None = None

    @property
    def wer(self) -> float | None:
        """WER of what was heard (``None`` for noise-only rows)."""
        return None if self.noise_only else wer(self.said, self.heard)

    @property
    def false_transcript(self) -> bool:
        """Noise only, yet words came out."""
        return self.noise_only and bool(words(self.heard))


def table(rows: Sequence[Row], *, calls: bool) -> str:
    """The rows as a Markdown table."""
    head = ["condition", "WER", "heard"]
    if calls:
        head += ["reply", "cut-off", "latency ms"]
    else:
        head += ["turn ended"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        w = r.wer
        if r.error:
            cells = [r.name, "error", r.error[:60]]
        elif r.noise_only:
            cells = [
                r.name,
                "—",
                ("FALSE: " + repr(r.heard)) if r.false_transcript else "(nothing)",
            ]
        else:
            cells = [r.name, f"{w:.2f}" if w is not None else "", repr(r.heard)[:70]]
        if calls and not r.error:
            reply = {True: "yes", False: "NO", None: "—"}[r.replied]
            if r.noise_only:
                reply = "TURN" if r.replied else "none"
            lat = f"{r.latency_ms:.0f}" if r.latency_ms is not None else "—"
            cells += [reply, "CUT" if r.cut else "", lat]
        elif calls:
            cells += ["", "", ""]
        else:
            cells += [{True: "yes", False: "NO (end of audio)", None: "—"}[r.ended]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(rows: Sequence[Row]) -> dict[str, float]:
    """Aggregates: mean WER over speech rows, false transcripts, replies, cut-offs, latency."""
    speech = [r for r in rows if not r.noise_only and not r.error]
    noise = [r for r in rows if r.noise_only and not r.error]
    lats = [r.latency_ms for r in speech if r.latency_ms is not None and r.latency_ms > 0]
    out: dict[str, float] = {
        "conditions": float(len(rows)),
        "mean_wer": statistics.fmean(r.wer or 0.0 for r in speech) if speech else float("nan"),
        "missed": float(sum(1 for r in speech if not words(r.heard))),
        "false_transcripts": float(sum(1 for r in noise if r.false_transcript)),
        "cut_offs": float(sum(1 for r in speech if r.cut)),
        "errors": float(sum(1 for r in rows if r.error)),
    }
    if any(r.replied is not None for r in speech):
        out["no_reply"] = float(sum(1 for r in speech if r.replied is False))
        out["false_turns"] = float(sum(1 for r in noise if r.replied))
    if lats:
        out["latency_p50_ms"] = float(np.percentile(lats, 50))
    return out


# ---------------------------------------------------------------- recognizer only


async def _chunks(mulaw: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(mulaw), _FRAME):
        yield mulaw[i : i + _FRAME]
        if i % (_FRAME * 50) == 0:
            await asyncio.sleep(0)


async def run_asr(conditions: Sequence[Condition], *, settings: Any = None) -> list[Row]:
    """Each condition through :class:`services.asr.providers.local.LocalAsr`, in process.

    The call's audio is 1 s of bed, the utterances with 1.5 s of bed after each, 1 s more.
    """
    from services.asr.providers.local import LocalAsr
    from shared.settings import Settings

    asr = LocalAsr(settings=settings or Settings())
    await asr.warm_up()
    rows = []
    for c in conditions:
        parts = [Utterance("", silence(1000))]
        for u in c.utterances:
            parts += [u, Utterance("", silence(1500))]
        parts.append(Utterance("", silence(1000)))
        line = np.concatenate([render(c, p, offset=i * 7919) for i, p in enumerate(parts)])
        events = [ev async for ev in asr.stream(_chunks(to_mulaw(line))) if ev.kind == "final"]
        finals = [ev.text for ev in events if ev.text.strip()]
        line_ms = len(line) * 1000 // SAMPLE_RATE
        # A turn closed by the end of the stream ends within a VAD window of it.
        ended = all((ev.speech_end_ms or 0) < line_ms - 100 for ev in events)
        rows.append(
            Row(
                name=c.name,
                axis=c.axis,
                said=c.said,
                heard=" ".join(finals),
                finals=len(finals),
                noise_only=c.noise_only,
                cut=len(finals) > len([u for u in c.utterances if u.text]),
                note=c.note,
                ended=ended if events else None,
            )
        )
    return rows


# ---------------------------------------------------------------- whole calls


def _caller_class() -> type:
    from devkit.simulator import SimulatedCall

    class RobustnessCaller(SimulatedCall):
        """A simulated caller with a background bed and, optionally, no manners."""

        def __init__(self, *, condition: Condition, **kw: Any) -> None:
            super().__init__(**kw)
            self.condition = condition
            self._bed_pos = 0
            self.early_done: asyncio.Future[float] | None = None
            self.finals: list[str] = []  # every final transcript, empty ones included
            self._keys: asyncio.Future[None] | None = None

        async def _send(self, msg: dict[str, Any], *, numbered: bool = True) -> None:
            c = self.condition
            if c.bed is not None and msg.get("event") == "media":
                import base64

                x = ulaw_to_float(base64.b64decode(msg["media"]["payload"]))
                idx = (self._bed_pos + np.arange(len(x))) % len(c.bed)
                self._bed_pos += len(x)
                y = x + c.bed[idx] * 10 ** (c.bed_dbfs / 20)
                msg["media"]["payload"] = base64.b64encode(to_mulaw(y)).decode()
            await super()._send(msg, numbered=numbered)

        async def _await_reply(self, turn: Any, first_timeout_s: float) -> None:
            if turn is self.result.greeting and self.condition.over_greeting:
                u = self.condition.utterances[0]
                self.early_done = self._speak(to_mulaw(u.audio))
            await super()._await_reply(turn, first_timeout_s)
            if turn is not self.result.greeting and turn.first_audio_at and not _answered(turn):
                # A re-prompt ("Are you still there?") crossed the caller's words: wait on for
                # the answer to them, and measure the latency to it. (A key pressed while
                # talking joins the words' turn: one answer, docs/robustness.md.)
                reprompt_at = turn.first_audio_at
                turn.first_audio_at = None
                await super()._await_reply(turn, first_timeout_s)
                if turn.first_audio_at is None:
                    turn.first_audio_at = reprompt_at

        def _speak(self, audio: bytes) -> asyncio.Future[float]:
            # The empty turn after an over-the-greeting utterance ends when that speech does.
            if not audio and self.early_done is not None:
                return self.early_done
            if audio and self.condition.dtmf_during and self._keys is None:
                self._keys = asyncio.ensure_future(self._keys_later())
            return super()._speak(audio)

        async def _keys_later(self) -> None:
            await asyncio.sleep(0.8)
            await self._press(self.condition.dtmf_during)

        async def _on_transcript(self, msg: Any) -> None:
            from shared.messages import Transcript, parse_transcript

            try:
                m = parse_transcript(msg.data)
            except ValueError:
                return
            if isinstance(m, Transcript) and m.is_final:
                self.finals.append(m.text)
            await super()._on_transcript(msg)

    return RobustnessCaller


def _answered(turn: Any) -> bool:
    """The agent replied to this turn (its re-prompts after a silence are not replies)."""
    from services.agent.fixed_prompts import SILENCE_GOODBYE, STILL_THERE

    if turn.first_audio_at is None:
        return False
    by_turn: dict[int, str] = {}
    for seg in sorted(turn.segments, key=lambda x: (x.turn, x.seq)):
        by_turn[seg.turn] = by_turn.get(seg.turn, "") + " " + seg.text
    prompts = (STILL_THERE, SILENCE_GOODBYE[:40])
    return any(not text.strip().startswith(prompts) for text in by_turn.values())


async def _one_call(
    c: Condition, info: Any, timeout_s: float, on_line: Callable[[str], None] | None = None
) -> Row:
    from devkit.simulator import CallerTurn

    row = Row(name=c.name, axis=c.axis, said=c.said, noise_only=c.noise_only, note=c.note)
    turns = [CallerTurn(kind="wav", value=c.name, audio=to_mulaw(u.audio)) for u in c.utterances]
    if c.over_greeting:  # said during the greeting; this turn waits for its reply
        turns[0] = CallerTurn(kind="wav", value=c.name, audio=b"")
    cls = _caller_class()
    call = cls(
        condition=c,
        on_line=on_line,
        gateway_url=info.gateway_url,
        public_url=info.public_url,
        auth_token=info.auth_token,
        nats_url=info.nats_url,
        greeting_timeout_s=30.0,
        reply_timeout_s=timeout_s,
        quiet_s=1.5,
    )
    if c.noise_only:
        call.reply_timeout_s = 8.0
    result = await call.run(turns)
    if not result.bus:
        row.error = "simulator could not reach NATS (transcripts unseen)"
        return row
    recognized = [t for ex in result.exchanges for t in ex.recognized if t.strip()]
    row.heard = " ".join(recognized)
    row.finals = len(recognized)
    row.agent = " | ".join(t.agent_text for t in result.turns if t.agent_text)
    if result.ended_by in ("rejected", "error"):
        row.error = f"call {result.ended_by}: {'; '.join(result.protocol_errors)[:80]}"
        return row
    row.empty_finals = sum(1 for t in call.finals if not t.strip())
    spoken = [u for u in c.utterances if u.text]
    row.cut = row.finals > len(spoken)
    answered = [_answered(t) for t in result.turns]
    if c.noise_only:
        row.replied = any(answered)
        return row
    row.replied = bool(answered) and all(answered)
    if c.over_greeting:
        # The reply may start while the greeting phase is still being waited out.
        from services.agent.fixed_prompts import STILL_THERE

        segs = [s for ex in result.exchanges for s in ex.segments]
        first = min((s.turn for s in segs), default=0)
        row.replied = any(s.turn > first and not s.text.startswith(STILL_THERE) for s in segs)
        return row
    lats = [t.latency_ms for t in result.turns if t.latency_ms is not None and _answered(t)]
    if any(lat < 0 for lat in lats):
        row.cut = True
    pos = [lat for lat in lats if lat >= 0]
    row.latency_ms = statistics.fmean(pos) if pos else None
    return row


async def run_calls(
    conditions: Sequence[Condition],
    *,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    timeout_s: float = 20.0,
    progress: Callable[[str], None] | None = print,
    verbose: bool = False,
) -> list[Row]:
    """Each condition as one simulated call against a fresh local stack (private NATS)."""
    import tempfile
    from pathlib import Path

    from voiceagent.ports import free_port
    from voiceagent.stack import Stack

    say = progress or (lambda _l: None)
    port, nats_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="robustness-") as tmp:
        knowledge = Path(tmp) / "knowledge.md"
        knowledge.write_text(
            "# Test Clinic\n\n## opening hours, open, hours, time\nWe open at nine.\n"
        )
        base = {
            "NATS_URL": f"nats://127.0.0.1:{nats_port}",  # nothing there: the stack starts one
            "REDIS_URL": "",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TWILIO_AUTH_TOKEN": "robust-" + "7" * 25,
            "ASR_PROVIDER": "local",
            "AGENT_PROVIDER": "local",
            "TTS_PROVIDER": "local",
            "LOG_FORMAT": "text",
            "KNOWLEDGE_FILE": str(knowledge),
            **(env or {}),
        }
        st = Stack(env=base, output=None, service_output=None)
        await st.start()
        try:
            await st.wait_ready(timeout_s=240)
            assert st.info is not None
            sem = asyncio.Semaphore(concurrency)
            # A first call warms every cache (TTS prompts, whisper buffers): not measured.
            await _one_call(build_conditions(["baseline"])[0], st.info, timeout_s)

            async def one(c: Condition) -> Row:
                async with sem:
                    try:
                        t0 = time.monotonic()

                        def line(text: str, name: str = c.name) -> None:
                            say(f"    [{name} {time.monotonic() - t0:5.1f}s] {text}")

                        row = await _one_call(c, st.info, timeout_s, line if verbose else None)
                        if row.error:  # a busy machine: one more try
                            row = await _one_call(c, st.info, timeout_s, line if verbose else None)
                    except Exception as e:  # one broken call must not hide the others
                        row = Row(c.name, c.axis, c.said, error=f"{type(e).__name__}: {e}")
                    say(
                        f"  {row.name}: heard {row.heard!r} reply={row.replied} cut={row.cut} "
                        f"latency={row.latency_ms} empty_finals={row.empty_finals} "
                        f"agent={row.agent!r}"
                    )
                    return row

            return list(await asyncio.gather(*(one(c) for c in conditions)))
        finally:
            await st.stop()


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.robustness``: print the table (Markdown)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.robustness")
    p.add_argument("--asr-only", action="store_true", help="recognizer in process, no calls")
    p.add_argument("--only", default="", help="comma-separated condition names")
    p.add_argument("--list", action="store_true", help="list the conditions and exit")
    p.add_argument("--concurrency", type=int, default=2, help="simultaneous calls")
    p.add_argument("-v", "--verbose", action="store_true", help="print each call as it goes")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or None
    if args.list:
        for c in build_conditions():
            print(f"{c.name:28} {c.axis:10} {c.said!r}")
        return 0
    began = time.monotonic()
    conds = build_conditions(names)
    if args.asr_only:
        rows = asyncio.run(run_asr(conds))
    else:
        rows = asyncio.run(run_calls(conds, concurrency=args.concurrency, verbose=args.verbose))
    print(table(rows, calls=not args.asr_only))
    print()
    for k, v in summary(rows).items():
        print(f"{k}: {v:.3g}")
    print(f"({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
