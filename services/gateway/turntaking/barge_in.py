"""Barge-in as a two-phase decision: pause at once, then confirm or revert (no I/O, no clock).

Phase 1 (the gateway's VAD, no bus round trip): caller speech of ``BARGE_IN_MIN_SPEECH_MS``
over agent audio pauses playback (Twilio ``clear``); the unheard remainder is kept.

Phase 2 (this arbiter) decides what the sound was:

- **confirm** (a real interruption): the caller's words arrive on the transcript subject with at
  least ``BARGE_IN_MIN_WORDS`` words that are not backchannels, or the speech lasts
  ``BARGE_IN_CONFIRM_SPEECH_MS``. The gateway then publishes ``Interrupt`` and ``Played``.
- **revert** (noise, a cough, "mm-hm"): the sound was short (``BARGE_IN_SHORT_SOUND_MS``) and
  ``BARGE_IN_QUICK_REVERT_MS`` of silence followed it (no wait for the recognizer: words that
  turn out to interrupt cut the resumed audio again), or the final transcript is empty (the
  recognizer rejected the sound) or only backchannels, or no qualifying words came within
  ``FALSE_INTERRUPTION_TIMEOUT_MS`` after the caller stopped, or an interim of only backchannels
  arrives after a short sound has stopped (the local recognizer decodes at the first 100 ms of
  pause: "Mm-hmm." resumes the agent before the quick revert's silence is over, and "No." is
  confirmed by its words before it). Playback resumes where it was cut.

**Soft pause** (``BARGE_IN_SOFT_PAUSE_MS`` > 0): the very start of a sound (a frame well over
the line's floor, before any VAD window) only *holds* playback: no new frames are sent, and
Twilio's buffered lead (``PLAYBACK_LEAD_MS``) plays on, so the agent falls silent a lead after
the onset either way. No speech within ``probe_ms`` (a click, a thump): feeding resumes before
the lead has run out, and the caller hears nothing. Speech of ``BARGE_IN_MIN_SPEECH_MS`` starts
the decision above without a ``clear``; the ``clear`` (**stop**) is sent only when the sound
outlasts ``BARGE_IN_SOFT_PAUSE_MS`` of speech (or words or long speech confirm it). A reverted
hold resumes from the next unsent frame: nothing was dropped, so nothing is repeated or lost.

While the recognizer has started an utterance but not finished it, the arbiter waits a little
longer for its final text (``ASR_GRACE_S``) before reverting: a slow recognizer must not turn a
real interruption into a resumed agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shared.backchannel import content_words

ASR_GRACE_S = 2.5  # extra wait for the final text of an utterance the recognizer has started
SPEECH_STARTED_SLACK_S = 1.0  # an ASR speech start this recent belongs to the barge-in
# Speech this soon after a quick revert goes on with the same sound ("Sorry, ... wait"): it is
# not quick-reverted again, its words (or the timeout) decide.
QUICK_REJOIN_S = 1.0
# An interim of only backchannels reverts once the caller's VAD has been quiet this long (the
# recognizer's interim comes from a pause; words still being said keep the decision open).
INTERIM_QUIET_S = 0.1


@dataclass(frozen=True, slots=True)
class BargeInPolicy:
    """The settings of the decision (from ``shared.settings.Settings``)."""

    min_words: int = 1
    confirm_speech_ms: int = 1500
    timeout_s: float = 1.2
    backchannels: frozenset[str] = frozenset()
    short_sound_ms: int = 600  # a sound over the agent no longer than this may be "mm-hm"
    quick_revert_ms: int = 400  # ...and this much silence after it resumes at once (0: off)
    soft_pause_ms: int = 0  # hold (no clear) until this much speech; 0: clear at the pause
    probe_ms: int = 150  # a held sound with no VAD speech this long is released...
    probe_quiet_ms: int = 100  # ...and one that went quiet this long (a click, a thump)


class Decision(Enum):
    """What the gateway does next about a paused turn."""

    WAIT = "wait"
    CONFIRM = "confirm"
    REVERT = "revert"
    STOP = "stop"  # a held sound outlasted the soft pause: clear Twilio's buffer now
    RELEASE = "release"  # a held onset was no speech: feed playback again


class BargeInArbiter:
    """Confirm-or-revert state of one call's paused turn. Times are monotonic seconds."""

    def __init__(self, *, policy: BargeInPolicy) -> None:
        self.policy = policy
        self.turn: int | None = None  # the paused turn (None: nothing paused)
        self.reason = ""  # why the last decision was taken (for events)
        self._paused_at = 0.0
        self._speech_ms = 0.0
        self._last_speech = 0.0
        self._last_final_id = 0  # utterances up to this one ended before the pause
        self._started_id = 0  # latest utterance the recognizer started
        self._started_at = -1e9
        self._starts: dict[int, float] = {}  # utterance -> when its speech start arrived
        self._pending_id: int | None = None  # started by the recognizer, no final yet
        self.soft = False  # paused without a clear (Twilio's lead plays out)
        self._probe_at: float | None = None  # a sound's onset held playback (no speech yet)
        self._probe_speech = 0.0  # last VAD speech (or the onset) while probing
        self._probe_sound = 0.0  # last frame over the line's floor while probing
        self._quick_at = -1e9  # the last quick revert
        self._no_quick = False  # this pause follows a quick revert closely: no second one

    @property
    def paused(self) -> bool:
        """A turn is paused, waiting for the decision."""
        return self.turn is not None

    @property
    def holding(self) -> bool:
        """Playback is held or paused: a sound is being judged."""
        return self.turn is not None or self._probe_at is not None

    def probe(self, now: float) -> bool:
        """A sound began over the agent (before any VAD window): True to hold playback now."""
        if self.policy.soft_pause_ms <= 0 or self.holding:
            return False
        self._probe_at = self._probe_speech = self._probe_sound = now
        return True

    def pause(self, turn: int, now: float, *, speech_ms: float, soft: bool = False) -> None:
        """Playback of ``turn`` was just paused (``soft``: held, no clear) after ``speech_ms``
        of caller speech."""
        self._probe_at = None
        self.soft = soft
        self._no_quick = now - self._quick_at <= QUICK_REJOIN_S
        self.turn = turn
        if not self._no_quick:  # else the same sound goes on: its words count from its start
            self._paused_at = now
        self._speech_ms = speech_ms
        self._last_speech = now
        recent = now - self._started_at <= SPEECH_STARTED_SLACK_S
        started = self._started_id > self._last_final_id
        self._pending_id = self._started_id if recent and started else None

    def done(self) -> None:
        """The decision was carried out."""
        self.turn = None
        self.soft = False
        self._probe_at = None
        self._pending_id = None

    def on_vad(
        self, *, speech_ms: float, speaking: bool, now: float, sounding: bool = True
    ) -> Decision:
        """VAD result of the caller's audio since the last call (``speech_ms`` newly heard;
        ``sounding``: the frame is over the line's floor, speech or not)."""
        p = self.policy
        if self.turn is None:
            if self._probe_at is None:
                return Decision.WAIT
            if speaking:
                self._probe_speech = now
            if speaking or sounding:
                self._probe_sound = now
            quiet = now - self._probe_sound >= p.probe_quiet_ms / 1000
            if not speaking and (quiet or now - self._probe_speech >= p.probe_ms / 1000):
                self._probe_at = None
                self.reason = "no_speech"
                return Decision.RELEASE
            return Decision.WAIT
        if speaking:
            self._last_speech = now
        self._speech_ms += speech_ms
        if self._speech_ms >= p.confirm_speech_ms:
            self.reason = "long_speech"
            return Decision.CONFIRM
        if self.soft and self._speech_ms >= p.soft_pause_ms:
            self.soft = False
            self.reason = "long_sound"
            return Decision.STOP
        if (
            p.quick_revert_ms
            and not self._no_quick
            and not speaking
            and self._speech_ms <= p.short_sound_ms
            and now - self._last_speech >= p.quick_revert_ms / 1000
        ):
            # A short sound that stopped ("mm-hm", a cough): resume now rather than after its
            # transcript. If its words turn out to be an interruption ("No."), they cut the
            # resumed audio again (interrupts_playback).
            self.reason = "short_sound"
            self._quick_at = now
            return Decision.REVERT
        return Decision.WAIT

    def on_speech_started(self, utterance_id: int, now: float) -> None:
        """The recognizer heard an utterance begin."""
        self._started_id = max(self._started_id, utterance_id)
        self._started_at = now
        self._starts[utterance_id] = now
        if len(self._starts) > 32:
            del self._starts[min(self._starts)]
        if self.turn is not None and utterance_id > self._last_final_id:
            self._pending_id = utterance_id
            self._last_speech = now

    def on_speech_stopped(self, utterance_id: int, now: float) -> None:
        """The recognizer heard an utterance end."""
        if self.turn is not None and utterance_id > self._last_final_id:
            self._last_speech = max(self._last_speech, now)

    def on_transcript(
        self, *, utterance_id: int, text: str, is_final: bool, now: float | None = None
    ) -> Decision:
        """Words of an utterance; decides when they are (or are not) an interruption (``now``:
        an interim of only backchannels after the caller went quiet reverts at once)."""
        if utterance_id <= self._last_final_id:
            return Decision.WAIT  # an utterance that ended before the pause
        recent = self._began_after(utterance_id, self._paused_at)
        if is_final:
            self._last_final_id = utterance_id
            self._starts.pop(utterance_id, None)
            if self._pending_id is not None and self._pending_id <= utterance_id:
                self._pending_id = None
        if self.turn is None:
            return Decision.WAIT
        if not recent:
            return Decision.WAIT  # a slow recognizer's text of what was said before the pause
        if content_words(text, self.policy.backchannels) >= self.policy.min_words:
            self.reason = "words"
            return Decision.CONFIRM
        if (
            not is_final
            and now is not None
            and text.strip()
            and not self._no_quick
            and self._speech_ms <= self.policy.short_sound_ms
            and now - self._last_speech >= INTERIM_QUIET_S
        ):
            # A short sound whose words so far are only backchannels ("Mm-hmm.") and that has
            # stopped: resume now, before the quick revert's silence runs out.
            self.reason = "backchannel"
            self._quick_at = now
            return Decision.REVERT
        if is_final and self._pending_id is None:
            self.reason = "no_words" if not text.strip() else "backchannel"
            return Decision.REVERT
        return Decision.WAIT

    def interrupts_playback(self, *, utterance_id: int, text: str, playing_since: float) -> bool:
        """Words said over agent audio (playing since ``playing_since``) that the VAD missed."""
        return (
            self.turn is None
            and utterance_id > self._last_final_id
            and utterance_id in self._starts
            and self._began_after(utterance_id, playing_since)
            and content_words(text, self.policy.backchannels) >= self.policy.min_words
        )

    def _began_after(self, utterance_id: int, t: float) -> bool:
        start = self._starts.get(utterance_id)
        return start is None or start >= t - SPEECH_STARTED_SLACK_S

    def tick(self, now: float) -> Decision:
        """Time passed: revert when no words came in time."""
        if self.turn is None:
            if (
                self._probe_at is not None
                and now - self._probe_speech >= self.policy.probe_ms / 1000 + 0.5
            ):
                self._probe_at = None  # no caller frames came to judge it: do not hold for ever
                self.reason = "no_speech"
                return Decision.RELEASE
            return Decision.WAIT
        wait = self.policy.timeout_s + (ASR_GRACE_S if self._pending_id is not None else 0.0)
        if now - self._last_speech >= wait:
            self.reason = "timeout"
            return Decision.REVERT
        return Decision.WAIT
