"""The audio intake of a held call: frame metadata, the bounded frame queue, the recognizer's feed.

Frames arrive on the worker's one raw nats-py audio subscription (50 a second per call: the
hot path) and wait in a :class:`FrameQueue` per call for its recognizer; when the recognizer
falls behind the oldest frames are dropped. :func:`recognizer_audio` hands them to one
recognizer stream, keeping the call's :class:`~services.asr.utterances.AudioClock`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping

from services.asr.utterances import AudioClock
from shared.headers import parse_audio_in

QUEUE_FRAMES = 250  # 5 s of audio per call waiting for its recognizer, then drop the oldest
# Frames nats-py may hold for the audio callback before dropping: 2 s of every call held.
AUDIO_PENDING_S = 2.0
MAX_CLOCK_SKEW_S = 5.0  # Va-Sent further than this from our clock is ignored

# mu-law bytes, Twilio media timestamp (ms, when sent), wall clock when the gateway sent it
Frame = tuple[bytes, int | None, float]


def frame_meta(
    headers: Mapping[str, str] | None, now: float
) -> tuple[int | None, int | None, float]:
    """(seq, Twilio timestamp ms, sent wall clock) of an ``audio.in`` frame.

    Raises ``ValueError`` on unparsable headers. A sender clock far from ours is ignored.
    """
    meta = parse_audio_in(headers)
    wall = now
    if meta.sent_ns:
        t = meta.sent_ns / 1e9
        if abs(t - now) <= MAX_CLOCK_SKEW_S:
            wall = t
    return meta.seq, meta.ts_ms, wall


class FrameQueue:
    """One call's frames waiting for its recognizer: bounded, the oldest dropped when full.

    A deque and one waiter future: about half the cost of an ``asyncio.Queue`` hand-off, which
    the intake pays 50 times a second per call.
    """

    __slots__ = ("_items", "_max", "_waiter")

    def __init__(self, *, maxsize: int) -> None:
        self._items: deque[Frame | None] = deque()
        self._max = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Frame | None) -> bool:
        """Enqueue without waiting; True when the oldest item had to go."""
        items = self._items
        dropped = len(items) >= self._max
        if dropped:
            items.popleft()
        items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return dropped

    async def get(self) -> Frame | None:
        """The oldest item, waiting for one if there is none."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()


async def recognizer_audio(queue: FrameQueue, clock: AudioClock) -> AsyncIterator[bytes]:
    """The call's queued audio, for one recognizer stream (ends at the ``None`` marker)."""
    first = True
    while True:
        item = await queue.get()
        if item is None:
            return
        data, ts, wall = item
        if first:
            clock.start_stream(ts)
            first = False
        clock.consumed(len(data), wall)
        yield data
