"""Caller audio publishing, coalesced: many calls' frames per socket write.

nats-py writes its pending buffer to the socket as soon as its flusher task runs, so frames
that arrive from different calls' WebSockets each cost a ``send`` system call (on loopback the
kernel also does the receiver's work in that call). With hundreds of calls that was the
gateway's largest cost. Frames published within ``WINDOW_S`` of each other are now handed to
nats-py in one go, so one write carries all of them; in-call order is kept. The window adds at
most ``WINDOW_S`` to a frame's trip to the bus (the budget for the whole gateway is 5 ms), and
nothing while the gateway is quiet: after a batch of one frame the next one goes out in the
same event-loop turn it was read in.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from nats.aio.client import Client as NATS

from shared.logging import kv
from shared.metrics import FRAMES_DROPPED

log = logging.getLogger(__name__)

WINDOW_S = 0.002
MAX_BATCH = 5000  # frames; beyond this the oldest are dropped (the bus is gone for seconds)

_DROPPED = FRAMES_DROPPED.labels("gateway", "publish")

Item = tuple[str, bytes, dict[str, str]]


class AudioBatcher:
    """Collects ``(subject, frame, headers)`` and publishes them together after ``window_s``."""

    def __init__(self, nc: NATS, *, window_s: float = WINDOW_S, max_batch: int = MAX_BATCH) -> None:
        self._nc = nc
        self._window = window_s
        self._max = max_batch
        self._items: list[Item] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._last_batch = 0  # frames in the previous batch: 1 means nothing to coalesce
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def add(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Queue one frame (never blocks); it is published within ``window_s``."""
        if len(self._items) >= self._max:
            del self._items[0]
            _DROPPED.inc()
        self._items.append((subject, data, headers))
        if self._timer is None:
            loop = asyncio.get_running_loop()
            if self._last_batch <= 1:
                # Quiet: waiting would only delay this frame. Frames read in this same loop
                # turn still go out together.
                self._timer = loop.call_soon(self._flush)
            else:
                self._timer = loop.call_later(self._window, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._task is not None and not self._task.done():
            # The previous batch is still being handed over: go again once it is done.
            self._timer = asyncio.get_running_loop().call_later(self._window, self._flush)
            return
        items, self._items = self._items, []
        self._last_batch = len(items)
        if items:
            self._task = asyncio.create_task(self._publish(items))

    async def _publish(self, items: list[Item]) -> None:
        nc = self._nc
        for i, (subject, data, headers) in enumerate(items):
            try:
                await nc.publish(subject, data, headers=headers)
            except Exception as e:  # closed or reconnect buffer full: these frames are lost
                _DROPPED.inc(len(items) - i)
                log.warning("audio publish failed", **kv(error=type(e).__name__))
                return
        self.published += len(items)

    async def flush(self) -> None:
        """Publish what is queued now (a call's end: its last frames go before ``CallEnded``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        items, self._items = self._items, []
        if items:
            await self._publish(items)


_batchers: weakref.WeakKeyDictionary[NATS, AudioBatcher] = weakref.WeakKeyDictionary()


def batcher_for(nc: NATS) -> AudioBatcher:
    """The process's batcher for connection ``nc`` (one per connection)."""
    b = _batchers.get(nc)
    if b is None:
        b = _batchers[nc] = AudioBatcher(nc)
    return b
