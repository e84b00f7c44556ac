"""Secrets from AWS Secrets Manager (ENV_VARS_ARN), against moto's emulator in server mode."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from shared import settings as settings_mod
from shared.logging import RedactingFormatter
from shared.secrets import SecretsError, load_into_environ
from tests.natsserver import free_port

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

TWILIO = "twilio-secret-Zq81vX"
OPENAI = "sk-openai-secret-P0o9i8"


@pytest.fixture(scope="module")
def aws(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Any]:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch_module.setenv(k, v)
    try:
        yield boto3.client("secretsmanager", region_name="us-east-1")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def make_secret(client: Any, name: str, value: str) -> str:
    arn: str = client.create_secret(Name=name, SecretString=value)["ARN"]
    return arn


def test_settings_come_from_the_secret_and_the_environment_wins(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = make_secret(
        aws,
        "voiceagent/prod-1",
        json.dumps({"TWILIO_AUTH_TOKEN": TWILIO, "OPENAI_API_KEY": OPENAI, "MAX_CALLS": 7}),
    )
    monkeypatch.setenv("ENV_VARS_ARN", arn)
    monkeypatch.setenv("OPENAI_API_KEY", "from-the-environment")
    for name in ("TWILIO_AUTH_TOKEN", "MAX_CALLS"):
        monkeypatch.delenv(name, raising=False)
    settings_mod.get_settings.cache_clear()
    try:
        s = settings_mod.get_settings()
        assert s.twilio_auth_token.get_secret_value() == TWILIO
        assert s.max_calls == 7
        assert s.openai_api_key.get_secret_value() == "from-the-environment"
        # Secret values never show in a settings repr (what a crash dump or log would print).
        assert TWILIO not in repr(s) and TWILIO not in str(s)
    finally:
        settings_mod.get_settings.cache_clear()


def test_secret_values_never_reach_logs_or_error_messages(
    aws: Any, caplog: pytest.LogCaptureFixture
) -> None:
    arn = make_secret(aws, "voiceagent/logs", json.dumps({"ELEVENLABS_API_KEY": OPENAI}))
    env: dict[str, str] = {}
    fmt = RedactingFormatter(service="t")
    with caplog.at_level(logging.DEBUG):
        assert load_into_environ(arn, environ=env) == ["ELEVENLABS_API_KEY"]
    assert env["ELEVENLABS_API_KEY"] == OPENAI
    lines = [fmt.format(r) for r in caplog.records]
    assert lines and not any(OPENAI in line for line in lines)

    # A malformed secret (not JSON, a nested value): the error says what is wrong, not the value.
    bad = make_secret(aws, "voiceagent/bad", "TWILIO_AUTH_TOKEN=" + TWILIO)
    with pytest.raises(SecretsError) as e:
        load_into_environ(bad, environ={})
    assert TWILIO not in str(e.value) and e.value.__cause__ is None
    nested = make_secret(aws, "voiceagent/nested", json.dumps({"X": {"v": TWILIO}}))
    with pytest.raises(SecretsError) as e:
        load_into_environ(nested, environ={})
    assert TWILIO not in str(e.value)
    # A missing secret: boto3's error is not chained (its text may carry request data).
    with pytest.raises(SecretsError) as e:
        load_into_environ("voiceagent/missing", environ={})
    assert "ResourceNotFoundException" in str(e.value) and e.value.__cause__ is None
