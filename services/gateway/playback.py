"""Playback queue: reply audio in, paced Twilio frames and marks out (no I/O, no clock of its own).

TTS replicas publish the chunks of each segment independently, so they may arrive in any order.
:class:`PlaybackQueue` reorders them by ``(turn, seq, chunk)``, paces 20 ms frames at most
``lead`` seconds ahead of what Twilio has played, puts a mark after every segment, skips a
segment that does not arrive in time (never dead air while later audio waits), and works out
what the caller heard when a turn is interrupted.

The caller drives it: ``poll(now)`` returns what to send now and when to call again. Every time
is a monotonic ``now`` in seconds passed in, so tests run it on a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.audio import FRAME_BYTES, SAMPLE_RATE

SEGMENT_TIMEOUT_S = 5.0  # wait this long for a segment that later audio is queued behind
ABANDON_GRACE_S = 0.3  # a later turn exists and nothing more is known of this one
MAX_SEGMENT_BYTES = 8000 * 120  # two minutes of audio: beyond that a TTS replica misbehaves
MAX_SEGMENTS = 256  # segments buffered per call (reply text or audio not yet played)


@dataclass(frozen=True, slots=True)
class SendMedia:
    """Send one frame of mu-law audio to Twilio."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SendMark:
    """Send a Twilio mark (named ``"<turn>:<seq>"``) after a segment's last frame."""

    name: str


@dataclass(frozen=True, slots=True)
class FirstAudio:
    """The first frame of a turn went out (for voice-to-voice latency)."""

    turn: int
    seq: int
    speech_ended_at: float | None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A segment was given up on (``reason``: ``timeout``, ``stalled``, ``abandoned``)."""

    turn: int
    seq: int
    reason: str


Action = SendMedia | SendMark | FirstAudio | Skipped


@dataclass(frozen=True, slots=True)
class Heard:
    """What the caller heard of one segment (becomes a ``Played`` message)."""

    turn: int
    seq: int
    text: str
    complete: bool


@dataclass(frozen=True, slots=True)
class Interruption:
    """Result of :meth:`PlaybackQueue.interrupt`."""

    clear: bool  # Twilio still holds (or plays) audio of the turn: send ``clear``
    heard: list[Heard]
    dropped_segments: int


@dataclass(frozen=True, slots=True)
class Hold:
    """Result of :meth:`PlaybackQueue.hold`: the turn held, and the mark to send Twilio."""

    turn: int
    mark: str


def mark_name(turn: int, seq: int) -> str:
    """The Twilio mark name of a segment."""
    return f"{turn}:{seq}"


def heard_prefix(text: str, fraction: float) -> str:
    """The words of ``text`` a caller heard when ``fraction`` of its audio had played.

    Speech time is roughly proportional to characters; a word cut in the middle counts as not
    heard.
    """
    if fraction >= 1.0:
        return text
    if fraction <= 0.0 or not text:
        return ""
    cut = int(len(text) * fraction)
    if cut < len(text) and not text[cut].isspace():
        space = max(text.rfind(" ", 0, cut + 1), 0)
        cut = space
    return text[:cut].rstrip()


def _bytes_s(n: int) -> float:
    return n / SAMPLE_RATE


@dataclass(slots=True)
class _Segment:
    turn: int
    seq: int
    created: float
    text: str | None = None
    turn_last: bool = False
    speech_ended_at: float | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    next_chunk: int = 0
    last_chunk: int | None = None
    buffer: bytearray = field(default_factory=bytearray)
    received: int = 0
    sent: int = 0
    last_activity: float = 0.0
    dry_since: float | None = None
    end_at: float = 0.0  # when Twilio will have played all of it that was sent
    mark_sent: bool = False
    reported: bool = False
    sent_audio: bytearray = field(default_factory=bytearray)  # kept to resume after a pause
    rewound: bool = False

    @property
    def has_audio(self) -> bool:
        return self.received > 0 or self.last_chunk is not None

    @property
    def all_received(self) -> bool:
        return self.last_chunk is not None and self.next_chunk > self.last_chunk

    def add(self, index: int, data: bytes, last: bool, now: float) -> bool:
        if index in self.chunks or index < self.next_chunk:
            return False  # duplicate
        if self.last_chunk is not None and index > self.last_chunk:
            return False
        if self.received + len(data) > MAX_SEGMENT_BYTES:
            return False
        self.chunks[index] = data
        self.received += len(data)
        self.last_activity = now
        self.dry_since = None
        if last:
            self.last_chunk = index
        while self.next_chunk in self.chunks:
            self.buffer += self.chunks.pop(self.next_chunk)
            self.next_chunk += 1
        return True

    def ready_frame(self) -> int:
        """How many bytes can go out as the next frame (0: none yet, or the segment is done)."""
        n = len(self.buffer)
        if n >= FRAME_BYTES:
            return FRAME_BYTES
        return n if self.all_received else 0

    def heard_fraction(self, now: float) -> float:
        total = self.received if self.all_received else max(self.received, self.sent)
        if total <= 0:
            return 0.0
        unplayed = max(0.0, self.end_at - now)
        played = max(0.0, _bytes_s(self.sent) - unplayed)
        return min(1.0, played / _bytes_s(total))


class PlaybackQueue:
    """Reorders, paces and marks one call's reply audio. See the module docstring."""

    def __init__(
        self,
        *,
        lead_s: float,
        segment_timeout_s: float = SEGMENT_TIMEOUT_S,
        abandon_grace_s: float = ABANDON_GRACE_S,
    ) -> None:
        self._lead = lead_s
        self._timeout = segment_timeout_s
        self._grace = min(abandon_grace_s, segment_timeout_s)
        self._segs: dict[tuple[int, int], _Segment] = {}
        self._done_turn = -1  # every turn <= this is played, skipped or interrupted
        self._turn: int | None = None  # cursor: the segment to play next
        self._seq = 0
        self._waiting_since: float | None = None
        self._play_end = 0.0  # when Twilio will have played everything sent so far
        self._inflight: list[_Segment] = []  # sent (partly or wholly), mark not yet echoed
        self._marks: dict[str, _Segment] = {}
        self._turns_started: set[int] = set()
        self.late_chunks = 0
        self._paused = False
        self._held = False  # sending stopped, Twilio's buffered lead left to play (hold)
        self._holds = 0
        self._hold_mark: str | None = None  # sent after the last frame before the hold
        self._drained = False  # ...and echoed: Twilio has played everything sent
        self._paused_turn = -1
        self._pause_heard: Heard | None = None
        self._stale_marks: dict[str, int] = {}  # echoes of marks voided by a pause

    # ------------------------------------------------------------------ input

    def _is_late(self, turn: int, seq: int) -> bool:
        if turn <= self._done_turn:
            return True
        return self._turn is not None and (
            turn < self._turn or (turn == self._turn and seq < self._seq)
        )

    def _segment(self, turn: int, seq: int, now: float) -> _Segment | None:
        seg = self._segs.get((turn, seq))
        if seg is None:
            if len(self._segs) >= MAX_SEGMENTS:
                return None
            seg = self._segs[(turn, seq)] = _Segment(turn=turn, seq=seq, created=now)
            seg.last_activity = now
        return seg

    def add_reply(
        self,
        *,
        turn: int,
        seq: int,
        text: str,
        last: bool,
        speech_ended_at: float | None,
        now: float,
    ) -> bool:
        """The text of a segment (from ``voice.<call>.reply``). False if it came too late."""
        if self._is_late(turn, seq):
            return False
        seg = self._segment(turn, seq, now)
        if seg is None:
            return False
        seg.text = text
        seg.turn_last = last
        seg.speech_ended_at = speech_ended_at
        return True

    def add_chunk(
        self, *, turn: int, seq: int, chunk: int, data: bytes, last: bool, now: float
    ) -> bool:
        """One audio chunk (from ``voice.<call>.audio.out``). False if dropped (late, dup)."""
        if self._is_late(turn, seq):
            self.late_chunks += 1
            return False
        seg = self._segment(turn, seq, now)
        if seg is None:
            return False
        return seg.add(chunk, data, last, now)

    # ------------------------------------------------------------------ output

    def poll(self, now: float) -> tuple[list[Action], float | None]:
        """What to send now, and the monotonic time to poll again (None: when input arrives)."""
        actions: list[Action] = []
        if self._paused or self._held:
            return actions, None
        while True:
            seg, wake = self._current(now, actions)
            if seg is None:
                return actions, wake
            n = seg.ready_frame()
            if n == 0 and not seg.all_received:
                # The buffer ran dry before the segment's last chunk: wait, but not forever.
                if seg.dry_since is None:
                    seg.dry_since = now
                since = max(seg.last_activity, seg.dry_since)
                if now - since < self._timeout:
                    return actions, since + self._timeout
                n = len(seg.buffer)
                if n == 0:
                    actions.append(Skipped(seg.turn, seg.seq, "stalled"))
                    self._finish(seg, actions)
                    continue
            if n == 0:
                self._finish(seg, actions)
                continue
            if self._play_end < now:
                self._play_end = now  # Twilio ran dry: the timeline restarts now
            dur = _bytes_s(n)
            if self._play_end + dur - now > self._lead + 1e-9:
                return actions, self._play_end + dur - self._lead
            frame = bytes(seg.buffer[:n])
            del seg.buffer[:n]
            seg.sent_audio += frame
            if seg.sent == 0 or seg.rewound:
                seg.rewound = False
                self._inflight.append(seg)
                if seg.turn not in self._turns_started:
                    self._turns_started.add(seg.turn)
                    actions.append(FirstAudio(seg.turn, seg.seq, seg.speech_ended_at))
            seg.sent += n
            self._play_end += dur
            seg.end_at = self._play_end
            actions.append(SendMedia(frame))

    def _finish(self, seg: _Segment, actions: list[Action]) -> None:
        if seg.sent:
            name = mark_name(seg.turn, seg.seq)
            seg.mark_sent = True
            self._marks[name] = seg
            actions.append(SendMark(name))
        self._advance(seg.turn, seg.turn_last)

    def _advance(self, turn: int, turn_done: bool) -> None:
        self._segs.pop((turn, self._seq), None)
        self._waiting_since = None
        if turn_done:
            self._end_turn(turn)
        else:
            self._seq += 1

    def _end_turn(self, turn: int) -> None:
        self._done_turn = max(self._done_turn, turn)
        self._turn = None
        for key in [k for k in self._segs if k[0] <= self._done_turn]:
            del self._segs[key]

    def _current(self, now: float, actions: list[Action]) -> tuple[_Segment | None, float | None]:
        """The segment at the cursor once it has audio; skips what waited too long."""
        while True:
            if self._turn is None:
                later = [k[0] for k in self._segs if k[0] > self._done_turn]
                if not later:
                    return None, None
                self._turn, self._seq, self._waiting_since = min(later), 0, None
            turn, seq = self._turn, self._seq
            seg = self._segs.get((turn, seq))
            if seg is not None and seg.has_audio:
                self._waiting_since = None
                return seg, None
            later_same = any(t == turn and s > seq for t, s in self._segs)
            later_turn = any(t > turn for t, _ in self._segs)
            if seg is not None and seg.turn_last and seg.text == "" and not later_same:
                # An empty closing segment (no audio will come): the turn is over.
                self._advance(turn, True)
                continue
            if not later_same and not later_turn:
                self._waiting_since = None
                return None, None
            if self._waiting_since is None:
                self._waiting_since = now
            limit = self._timeout if (seg is not None or later_same) else self._grace
            if now - self._waiting_since < limit:
                return None, self._waiting_since + limit
            if later_same:
                actions.append(Skipped(turn, seq, "timeout"))
                self._advance(turn, False)
            else:
                actions.append(Skipped(turn, seq, "timeout" if seg is not None else "abandoned"))
                self._end_turn(turn)
                self._waiting_since = None

    # ------------------------------------------------------------------ feedback

    def on_mark(self, name: str) -> Heard | None:
        """Twilio echoed a mark: the segment played in full (None if unknown or reported)."""
        if name == self._hold_mark:
            self._drained = True  # everything sent before the hold was heard
            return None
        stale = self._stale_marks.get(name, 0)
        if stale:
            # Twilio echoes pending marks on ``clear``: this one's audio was not heard.
            if stale == 1:
                del self._stale_marks[name]
            else:
                self._stale_marks[name] = stale - 1
            return None
        seg = self._marks.pop(name, None)
        if seg is None or seg.reported:
            return None
        seg.reported = True
        if seg in self._inflight:
            self._inflight.remove(seg)
        return Heard(seg.turn, seg.seq, seg.text or "", True)

    def interrupt(self, turn: int, now: float) -> Interruption:
        """Stop ``turn`` (and anything older): what was heard, and whether to send ``clear``."""
        self._unhold()
        if self._paused:
            return self._interrupt_paused(turn)
        clear = any(s.turn <= turn for s in self._inflight)
        if clear:
            # ``clear`` empties Twilio's whole buffer, so whatever else was sent goes too.
            turn = max(turn, *(s.turn for s in self._inflight))
        heard: list[Heard] = []
        partial = False
        for seg in self._inflight if clear else []:
            seg.reported = True
            if partial:
                continue
            fraction = seg.heard_fraction(now)
            if seg.mark_sent and fraction >= 1.0:
                heard.append(Heard(seg.turn, seg.seq, seg.text or "", True))
            else:
                text = heard_prefix(seg.text or "", fraction)
                heard.append(Heard(seg.turn, seg.seq, text, False))
                partial = True
        if clear:
            self._inflight = []
        if not partial and self._turn == turn and any(k[0] == turn for k in self._segs):
            # Nothing of the turn was audible yet: the caller heard none of it.
            heard.append(Heard(turn, self._seq, "", False))
        dropped = sum(1 for k in self._segs if k[0] <= turn)
        if turn > self._done_turn:
            self._done_turn = turn
            for key in [k for k in self._segs if k[0] <= turn]:
                del self._segs[key]
            if self._turn is not None and self._turn <= turn:
                self._turn = None
                self._waiting_since = None
        if clear:
            self._play_end = min(self._play_end, now)
        return Interruption(clear=clear, heard=heard, dropped_segments=dropped)

    # ------------------------------------------------------------------ pause (barge-in)

    def pause(self, now: float) -> int | None:
        """Stop sending at once and rewind to what the caller has not heard yet.

        The caller of this sends Twilio ``clear`` (which drops Twilio's buffer and echoes the
        pending marks: those of rewound segments are ignored). :meth:`resume` plays the unheard
        remainder from where it was cut; :meth:`interrupt` gives the turn up. Returns the turn
        paused, or None when no agent audio was playing.
        """
        if self._paused or not self.is_playing(now):
            return None
        drained = self.drained
        self._unhold()
        rewound: list[_Segment] = []
        for seg in list(self._inflight):
            unplayed = max(0.0, seg.end_at - now)
            played_s = max(0.0, _bytes_s(seg.sent) - unplayed)
            heard = min(seg.sent, int(played_s * SAMPLE_RATE) // FRAME_BYTES * FRAME_BYTES)
            if drained:
                heard = seg.sent  # Twilio said so (the hold's mark): no clock estimate
            if heard >= seg.sent and seg.mark_sent:
                continue  # heard in full: its echoed mark reports it
            if seg.mark_sent:
                name = mark_name(seg.turn, seg.seq)
                self._marks.pop(name, None)
                self._stale_marks[name] = self._stale_marks.get(name, 0) + 1
                seg.mark_sent = False
            seg.buffer[0:0] = seg.sent_audio[heard:]
            del seg.sent_audio[heard:]
            seg.sent = heard
            seg.rewound = True
            seg.dry_since = None
            seg.last_activity = now
            self._inflight.remove(seg)
            rewound.append(seg)
        turn = self._turn
        if rewound:
            first = rewound[0]
            turn = first.turn
            for seg in rewound:
                self._segs[(seg.turn, seg.seq)] = seg
            self._turn, self._seq, self._waiting_since = first.turn, first.seq, None
            self._done_turn = min(self._done_turn, first.turn - 1)
            total = first.received if first.all_received else max(first.received, first.sent)
            fraction = first.sent / total if total else 0.0
            self._pause_heard = Heard(
                first.turn, first.seq, heard_prefix(first.text or "", fraction), False
            )
        elif self._inflight:
            turn = self._inflight[-1].turn
        self._play_end = min(self._play_end, now)
        self._paused = True
        self._paused_turn = turn if turn is not None else self._done_turn
        return turn

    def hold(self, now: float) -> Hold | None:
        """Stop sending new frames but leave Twilio's buffered lead playing (no ``clear``).

        A sound that ends while the lead still plays costs the caller nothing: :meth:`resume`
        sends the next frame where the last one ended. :meth:`pause` or :meth:`interrupt`
        follow when it does not. The caller of this sends the returned mark: its echo says
        Twilio has played everything sent (:attr:`drained`), so a later :meth:`pause` rewinds
        nothing and needs no ``clear``. None: nothing is playing (or already held).
        """
        turn = self.playing_turn(now)
        if self._paused or self._held or turn is None or not self.is_playing(now):
            return None
        self._held = True
        self._holds += 1
        self._hold_mark = f"hold:{self._holds}"
        self._drained = False
        return Hold(turn=turn, mark=self._hold_mark)

    @property
    def drained(self) -> bool:
        """Held, and Twilio has played everything sent before the hold (its mark echoed)."""
        return self._held and self._drained

    def _unhold(self) -> None:
        self._held = False
        self._hold_mark = None
        self._drained = False

    def resume(self, now: float) -> None:
        """Play again from where :meth:`pause` cut or :meth:`hold` stopped sending."""
        if self._held:
            self._unhold()
            self._play_end = max(self._play_end, now)
            return
        if not self._paused:
            return
        self._paused = False
        self._pause_heard = None
        self._play_end = max(self._play_end, now)

    @property
    def paused(self) -> bool:
        """Sending is stopped by :meth:`pause`."""
        return self._paused

    @property
    def held(self) -> bool:
        """Sending is stopped by :meth:`hold` (Twilio's lead still plays)."""
        return self._held

    def _interrupt_paused(self, turn: int) -> Interruption:
        """:meth:`interrupt` after :meth:`pause`: Twilio's buffer is already cleared."""
        if turn < self._paused_turn:
            return Interruption(clear=False, heard=[], dropped_segments=0)  # an older turn
        self._paused = False
        partial = self._pause_heard
        self._pause_heard = None
        heard: list[Heard] = []
        for seg in self._inflight:
            if not seg.reported:
                seg.reported = True
                heard.append(Heard(seg.turn, seg.seq, seg.text or "", True))
        if self._inflight:
            turn = max(turn, *(s.turn for s in self._inflight))
        self._inflight = []
        if partial is not None:
            turn = max(turn, partial.turn)
            heard.append(partial)
        elif self._turn == turn and any(k[0] == turn for k in self._segs):
            heard.append(Heard(turn, self._seq, "", False))
        dropped = sum(1 for k in self._segs if k[0] <= turn)
        if turn > self._done_turn:
            self._done_turn = turn
        for key in [k for k in self._segs if k[0] <= turn]:
            del self._segs[key]
        if self._turn is not None and self._turn <= turn:
            self._turn = None
            self._waiting_since = None
        return Interruption(clear=False, heard=heard, dropped_segments=dropped)

    # ------------------------------------------------------------------ state

    def is_playing(self, now: float) -> bool:
        """Agent audio is audible, or sent and not yet confirmed played."""
        return self._play_end > now or bool(self._inflight)

    def playing_turn(self, now: float) -> int | None:
        """The turn the caller is hearing now (or is about to)."""
        for seg in self._inflight:
            if seg.end_at > now or not seg.mark_sent:
                return seg.turn
        if self._inflight:
            return self._inflight[-1].turn
        return self._turn

    def turn_played(self, turn: int) -> bool:
        """Every segment of ``turn`` (and earlier) is played, skipped or interrupted."""
        past = self._done_turn >= turn or (self._turn is not None and self._turn > turn)
        return past and not any(s.turn <= turn for s in self._inflight)

    def idle(self, turn: int, now: float) -> bool:
        """Nothing of ``turn`` or earlier is queued, sent or playing."""
        if self._play_end > now or any(s.turn <= turn for s in self._inflight):
            return False
        return not any(k[0] <= turn for k in self._segs)

    @property
    def done_turn(self) -> int:
        """Every turn up to this one is over."""
        return self._done_turn
