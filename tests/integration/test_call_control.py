"""Hang-up and transfer through the Twilio REST API, against the local fake of its Calls
endpoint: the gateway call logic on a private NATS server, Twilio's leg in process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from devkit.call_harness import TurnBench, bench_call
from devkit.fakes.twilio_rest import FakeTwilioRest
from services.gateway.call_control import CallControl
from shared import subjects
from shared.messages import CallEnded, Hangup, StageFailed, Transfer
from shared.settings import Settings
from tests.integration.agent_bus import private_nats_server

pytestmark = pytest.mark.integration

ACCOUNT = "AC" + "7" * 32
TOKEN = "rest-token-" + "x" * 21
NUMBER = "+15551234567"


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    with private_nats_server() as url:
        yield url


@pytest.fixture
def fake() -> Iterator[FakeTwilioRest]:
    with FakeTwilioRest(account_sid=ACCOUNT, auth_token=TOKEN) as f:
        yield f


def rest_settings(url: str, fake: FakeTwilioRest, token: str = TOKEN) -> Settings:
    return Settings(
        _env_file=None,
        nats_url=url,
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=token,
        twilio_api_base_url=fake.base_url,
        transfer_targets=f"front_desk={NUMBER}",  # the gateway dials nothing else
    )


async def send(b: TurnBench, msg: Hangup | Transfer) -> None:
    await b.nc.publish(subjects.control(b.call_sid), msg.to_bytes())


async def wait_requests(fake: FakeTwilioRest, n: int) -> None:
    for _ in range(250):
        if len(fake.requests) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no REST request")


def ended_reason(b: TurnBench) -> str | None:
    ended = [m for m in b.tap.other if isinstance(m, CallEnded)]
    return ended[0].reason if ended else None


async def test_hangup_closes_the_stream_and_completes_the_call(
    nats_url: str, fake: FakeTwilioRest
) -> None:
    async with bench_call(nats_url, settings=rest_settings(nats_url, fake), vad=False) as b:
        await b.agent_says(1, ["Goodbye."], seconds=0.5)
        await send(b, Hangup(call_sid=b.call_sid, after_turn=1))
        await asyncio.wait_for(b.leg.closed.wait(), 5)
        assert len(b.leg.heard) >= 0.5 * 8000 - 320  # the goodbye played before the close
        await wait_requests(fake, 1)
    [req] = fake.requests
    assert req.call_sid == b.call_sid and req.account_sid == ACCOUNT and req.authorized
    assert req.form == {"Status": "completed"} and req.status == 200
    assert fake.call(b.call_sid)["status"] == "completed"  # type: ignore[index]
    assert ended_reason(b) == "hangup:agent"


async def test_transfer_redirects_the_call_with_dial_twiml(
    nats_url: str, fake: FakeTwilioRest
) -> None:
    async with bench_call(nats_url, settings=rest_settings(nats_url, fake), vad=False) as b:
        await send(b, Transfer(call_sid=b.call_sid, to=NUMBER))
        await asyncio.wait_for(b.leg.closed.wait(), 5)
    [req] = fake.requests
    assert req.call_sid == b.call_sid and req.status == 200
    assert f"<Dial>{NUMBER}</Dial>" in req.form["Twiml"]
    assert ended_reason(b) == "transfer"


async def test_rest_failures_are_survived(nats_url: str, fake: FakeTwilioRest) -> None:
    async with bench_call(nats_url, settings=rest_settings(nats_url, fake), vad=False) as b:
        fake.fail(404)
        await send(b, Transfer(call_sid=b.call_sid, to=NUMBER))
        await wait_requests(fake, 1)
        for _ in range(100):
            if any(isinstance(m, StageFailed) for m in b.tap.other):
                break
            await asyncio.sleep(0.02)
        failed = [m for m in b.tap.other if isinstance(m, StageFailed)]
        assert failed and failed[0].reason == "transfer"  # the agent is told and apologizes
        assert not b.leg.closed.is_set()  # the caller is not dropped
        fake.fail(500)
        await send(b, Hangup(call_sid=b.call_sid))
        await asyncio.wait_for(b.leg.closed.wait(), 5)  # closed even though REST failed
        await wait_requests(fake, 2)
    assert [r.status for r in fake.requests] == [404, 500]
    assert ended_reason(b) == "hangup:agent"


async def test_bad_credentials_and_no_credentials(nats_url: str, fake: FakeTwilioRest) -> None:
    bad = CallControl(account_sid=ACCOUNT, auth_token="wrong", base_url=fake.base_url)
    assert await bad.hangup("CA" + "1" * 32) is False
    assert fake.requests[-1].status == 401 and not fake.requests[-1].authorized
    s = Settings(_env_file=None, nats_url=nats_url, twilio_api_base_url=fake.base_url)
    async with bench_call(nats_url, settings=s, vad=False) as b:
        await send(b, Hangup(call_sid=b.call_sid))
        await asyncio.wait_for(b.leg.closed.wait(), 5)
    assert len(fake.requests) == 1  # without credentials: the stream closes, no REST call
