"""Replay reads a stored call from whatever NATS the stack runs on (the machine's, here).

The machine's server may be older than the one tests start themselves; it refuses a consumer
filter that is not a subset of the stream's subjects, which ``voice.<call>.*`` is not.
"""

from __future__ import annotations

from uuid import uuid4

import nats
import pytest

from shared import subjects
from shared.callevents import ensure_stream, read_call
from shared.messages import CallStarted, Event, ReplySegment, Transcript
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def test_replay_reads_every_stored_kind_in_order(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        assert await ensure_stream(nc, Settings(nats_url=nats_url))
        sid = "CA" + uuid4().hex
        sent = [
            (subjects.control(sid), CallStarted(call_sid=sid, stream_sid="MZ1", gateway_id="g")),
            (subjects.events(sid), Event(call_sid=sid, service="gateway", name="call.started")),
            (
                subjects.transcript(sid),
                Transcript(call_sid=sid, utterance_id=1, text="hi", is_final=True),
            ),
            (
                subjects.reply(sid),
                ReplySegment(call_sid=sid, turn=1, seq=0, text="Hello.", last=True),
            ),
        ]
        js = nc.jetstream()
        for subject, msg in sent:
            await js.publish(subject, msg.to_bytes())
        await nc.publish(subjects.audio_in(sid, "asr-1"), b"\xff" * 160)  # audio: never stored
        stored = await read_call(nc, sid)
        assert [m.subject for m in stored] == [s for s, _ in sent]
    finally:
        await nc.close()
