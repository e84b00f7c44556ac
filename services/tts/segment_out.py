"""The audio of one reply segment on the bus: numbered ``audio.out`` chunks, then ``Va-Last``.

Every segment received ends with a chunk carrying ``Va-Last: 1`` (possibly empty): the gateway
never waits for audio that will not come.
"""

from __future__ import annotations

import time

from nats.aio.client import Client as NATS

from shared import subjects
from shared.headers import AudioOut, audio_out_headers
from shared.messages import ReplySegment
from shared.metrics import FRAMES

SERVICE = "tts"
_FRAMES_OUT = FRAMES.labels(SERVICE, "out")  # audio chunks sent (any size)


class SegmentOut:
    """Publishes the chunks of one segment, numbered, and its final ``Va-Last`` marker."""

    def __init__(self, *, nc: NATS, seg: ReplySegment, traceparent: str | None = None) -> None:
        self._nc = nc
        self._traceparent = traceparent
        self._subject = subjects.audio_out(seg.call_sid)
        self._seg = seg
        self.chunks = 0
        self.audio_bytes = 0
        self.closed = False

    async def send(self, data: bytes) -> None:
        await self._publish(data, last=False)
        self.audio_bytes += len(data)
        _FRAMES_OUT.inc()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._publish(b"", last=True)

    async def _publish(self, data: bytes, *, last: bool) -> None:
        meta = AudioOut(
            turn=self._seg.turn,
            seg=self._seg.seq,
            chunk=self.chunks,
            last=last,
            service=SERVICE,
            sent_ns=time.time_ns(),
            traceparent=self._traceparent,
        )
        self.chunks += 1
        hdrs = audio_out_headers(meta)
        await self._nc.publish(self._subject, data, headers=hdrs)
