"""The simulated caller waits for the answer when the agent started over it and gave way.

A gateway of the test's own (a WebSocket speaking Twilio's outbound messages) plays a greeting,
then 200 ms of a reply while the caller is still talking and stops (as the real gateway holds a
reply the caller talks over); the answer comes only after the caller's speech ends. A person
hears the answer; the simulator must too, with the latency counted from the caller's end.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import websockets

from devkit.simulator import CallerTurn, SimulatedCall, StreamTarget
from shared.audio import FRAME_BYTES, float_to_pcm16, pcm16_to_ulaw8k
from shared.twilio import mark_message, media_message

SPEECH_S = 3.0
EARLY_FRAMES = 10  # 200 ms of reply started over the caller
ANSWER_FRAMES = 25  # 500 ms: the answer, after the caller's end


def _tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    return pcm16_to_ulaw8k(float_to_pcm16(0.3 * np.sin(2 * np.pi * 220 * t)), rate=8000)


async def _gateway(ws: websockets.ServerConnection) -> None:
    stream_sid = ""
    loud = quiet_after = 0
    early_sent = answered = False
    frame = bytes([0x7F]) * FRAME_BYTES  # audible enough: not mu-law silence (0xFF)

    async def play(frames: int, mark: str) -> None:
        for _ in range(frames):
            await ws.send(media_message(stream_sid, frame))
        await ws.send(mark_message(stream_sid, mark))

    async for raw in ws:
        msg = json.loads(raw)
        if msg["event"] == "start":
            stream_sid = msg["streamSid"]
            await play(5, "1:0")  # the greeting
        elif msg["event"] == "media":
            payload = base64.b64decode(msg["media"]["payload"])
            speaking = payload != bytes([0xFF]) * len(payload)
            if speaking:
                loud += 1
                quiet_after = 0
            elif loud:
                quiet_after += 1
            if loud == 25 and not early_sent:
                early_sent = True
                await play(EARLY_FRAMES, "2:0")  # started too soon, then held (no more sent)
            if quiet_after == 15 and not answered:
                answered = True
                await play(ANSWER_FRAMES, "3:0")
        elif msg["event"] == "stop":
            return


async def test_a_reply_given_up_over_the_caller_is_not_the_answer() -> None:
    async with websockets.serve(_gateway, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/twilio-stream"
        sim = SimulatedCall(
            gateway_url=f"http://127.0.0.1:{port}",
            public_url=f"http://127.0.0.1:{port}",
            auth_token="t",
            quiet_s=1.0,
            greeting_timeout_s=5,
            reply_timeout_s=5,
        )
        turn = CallerTurn(kind="wav", value="tone.wav", audio=_tone(SPEECH_S))
        result = await asyncio.wait_for(
            sim.stream(StreamTarget(url=url, parameters={}), [turn]), 20
        )

    said = result.turns[0]
    assert said.talked_over_ms == EARLY_FRAMES * 20
    assert said.reply_ms == ANSWER_FRAMES * 20, "the answer after the caller's end was missed"
    assert said.latency_ms is not None and 200 < said.latency_ms < 1500
