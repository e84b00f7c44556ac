"""A development stack's Twilio account: simulated calls carry one, services only a given one."""

from __future__ import annotations

import pytest

from voiceagent.stack import Stack

ENV = {"NATS_URL": "nats://127.0.0.1:4222", "REDIS_URL": "", "TWILIO_AUTH_TOKEN": "t" * 32}


def test_no_account_given_means_no_rest_credentials_for_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TWILIO_ACCOUNT_SID", raising=False)
    specs, info = Stack(env=ENV, output=None, providers="local")._resolve()
    # The simulator still has an AccountSid to put in Twilio's messages ...
    assert info.account_sid.startswith("AC") and len(info.account_sid) == 34
    # ... but no service is handed it: with it the gateway would complete every hang-up
    # through api.twilio.com, sending the development token there.
    services = [s for s in specs if s.name != "nats"]
    assert services and all(not s.env.get("TWILIO_ACCOUNT_SID") for s in services)


def test_a_given_account_reaches_the_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_ACCOUNT_SID", raising=False)
    account = "AC" + "5" * 32
    specs, info = Stack(
        env={**ENV, "TWILIO_ACCOUNT_SID": account}, output=None, providers="local"
    )._resolve()
    assert info.account_sid == account
    gateway = next(s for s in specs if s.name == "gateway")
    assert gateway.env["TWILIO_ACCOUNT_SID"] == account
