"""``/websocket-status`` and ``/websocket-metrics`` over the running system, during a call.

The stack's four service processes, a simulated Twilio caller: while the call's media stream
is open, the status shows one live stream; afterwards the metrics (Prometheus text, parsed
with prometheus_client's parser) count the frames that stream carried in and out and the
turn's latency. Without the admin token both answer 401.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkit.simulator import SimulatedCall, new_sid, prepare_turns, say
from voiceagent.stack import Stack, free_port

pytestmark = pytest.mark.integration

TOKEN = "ops-" + "6" * 28
ADMIN = "admin-" + "9" * 26
KNOWLEDGE = "# Clinic\n\n## opening hours, open, hours\nWe open at nine.\n"


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ops") / "knowledge.md"
    path.write_text(KNOWLEDGE)
    return path


@pytest.fixture(scope="module")
async def stack(nats_url: str, redis_url: str, knowledge: Path) -> AsyncIterator[Stack]:
    port = free_port()
    env = {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "ADMIN_TOKEN": ADMIN,
        "ASR_PROVIDER": "local",
        "AGENT_PROVIDER": "local",
        "TTS_PROVIDER": "local",
        "LOG_FORMAT": "text",
        "KNOWLEDGE_FILE": str(knowledge),
    }
    st = Stack(env=env, output=None, service_output=None)
    await st.start()
    try:
        await st.wait_ready(timeout_s=150)
        yield st
    finally:
        await st.stop()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_stream_count_frames_and_latency_behind_the_admin_token(stack: Stack) -> None:
    info = stack.info
    assert info is not None
    bearer = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=info.gateway_url, trust_env=False, timeout=5) as http:
        for path in ("/websocket-status", "/websocket-metrics"):
            assert (await http.get(path)).status_code == 401
            assert (await http.get(path, headers={"authorization": "Bearer no"})).status_code == 401
        assert (await http.get("/websocket-status", headers=bearer)).json()["sockets"] == 0

        call = SimulatedCall(
            gateway_url=info.gateway_url,
            public_url=info.public_url,
            auth_token=TOKEN,
            nats_url=None,
            call_sid=new_sid("CA"),
            greeting_timeout_s=30,
            reply_timeout_s=25,
        )
        task = asyncio.create_task(call.run(await prepare_turns([say("What are your hours?")])))
        live: list[int] = []
        while not task.done():
            status = (await http.get("/websocket-status", headers=bearer)).json()
            live.append(status["sockets"])
            await asyncio.sleep(0.2)
        result = await task
        assert result.turns and result.turns[0].first_audio_at is not None
        assert max(live) == 1, live  # the call's one media stream, while it was open

        resp = await http.get("/websocket-metrics", headers=bearer)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(resp.text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset({"service": "gateway", **labels}.items())), 0.0)

    assert samples[("voice_websocket_streams", frozenset())] == 0  # the call is over
    # 20 ms frames: the caller's sentence in, the greeting and the answer out.
    assert value("voice_frames_total", direction="in") > 100
    assert value("voice_frames_total", direction="out") > 100
    assert value("voice_stage_seconds_count", stage="voice_to_voice") >= 1
    assert value("voice_stage_seconds_sum", stage="voice_to_voice") > 0
