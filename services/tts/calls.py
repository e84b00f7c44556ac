"""What the TTS worker keeps per call: what barge-in needs, bounded.

The turns interrupted lately (a segment of one arriving late is not spoken), the segment tasks
in flight (an interrupt cancels them), and the calls that ended; every record is bounded
(the least recently used forgotten first).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field

CANCELLED_TURNS_PER_CALL = 32  # interrupted turns remembered per call (oldest forgotten)
MAX_CALLS = 10_000  # per-call records kept (least recently used forgotten first)


@dataclass
class _Call:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancelled: deque[int] = field(default_factory=lambda: deque(maxlen=CANCELLED_TURNS_PER_CALL))
    tasks: dict[int, set[asyncio.Task[None]]] = field(default_factory=dict)
    # The latest turn's audio so far: when its first chunk went out, and how many seconds.
    audio_turn: int | None = None
    audio_start: float = 0.0
    audio_s: float = 0.0

    def needed_at(self, turn: int, now: float) -> float:
        """When ``turn``'s next segment starts to play: after the audio sent for it so far."""
        if turn != self.audio_turn:
            return now
        return self.audio_start + self.audio_s

    def sent(self, turn: int, seconds: float, now: float) -> None:
        """``seconds`` more audio of ``turn`` went out at ``now``."""
        if turn != self.audio_turn:
            self.audio_turn, self.audio_start, self.audio_s = turn, now, 0.0
        self.audio_s += seconds


class CallRegistry:
    """Bounded per-call state: interrupted turns, in-flight segment tasks, ended calls."""

    def __init__(self, *, max_calls: int = MAX_CALLS) -> None:
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._max = max_calls

    def get(self, call_sid: str) -> _Call:
        """The call's record, created on first use (evicting the least recent idle one)."""
        state = self._calls.get(call_sid)
        if state is None:
            state = self._calls[call_sid] = _Call()
            if len(self._calls) > self._max:
                for sid, old in self._calls.items():
                    if not old.tasks and sid != call_sid:
                        del self._calls[sid]
                        break
        else:
            self._calls.move_to_end(call_sid)
        return state

    def is_cancelled(self, call_sid: str, turn: int) -> bool:
        """True when the call ended or ``turn`` was interrupted."""
        if call_sid in self._ended:
            return True
        state = self._calls.get(call_sid)
        return state is not None and turn in state.cancelled

    def interrupt(self, call_sid: str, turn: int) -> int:
        """Remember ``turn`` as cancelled and cancel its tasks; returns how many were running."""
        state = self.get(call_sid)
        if turn not in state.cancelled:
            state.cancelled.append(turn)
        tasks = state.tasks.get(turn, set())
        for task in tasks:
            task.cancel()
        return len(tasks)

    def end(self, call_sid: str) -> None:
        """Forget the call; cancel what it still has in flight."""
        state = self._calls.pop(call_sid, None)
        self._ended[call_sid] = None
        if len(self._ended) > self._max:
            self._ended.popitem(last=False)
        if state is not None:
            for tasks in state.tasks.values():
                for task in tasks:
                    task.cancel()

    def track(self, call_sid: str, turn: int, task: asyncio.Task[None]) -> None:
        """Register a segment task until it finishes."""
        state = self.get(call_sid)
        state.tasks.setdefault(turn, set()).add(task)

        def done(t: asyncio.Task[None]) -> None:
            running = state.tasks.get(turn)
            if running is not None:
                running.discard(t)
                if not running:
                    del state.tasks[turn]

        task.add_done_callback(done)

    def __len__(self) -> int:
        return len(self._calls)
