"""``--providers cloud``: which fakes start, and what the services are told."""

from __future__ import annotations

import pytest

from voiceagent.cli import build_parser
from voiceagent.cloud import plan_cloud
from voiceagent.stack import Stack


def test_every_cloud_provider_gets_a_fake_and_the_services_are_pointed_at_it() -> None:
    plan = plan_cloud(ports={"deepgram": 9401, "openai": 9101}, api_key="k")
    names = {s.name for s in plan.specs}
    assert names == {"fake-deepgram", "fake-openai", "fake-mcp_server", "fake-elevenlabs"}
    argv = {s.name: list(s.argv) for s in plan.specs}
    want = ["devkit.fakes.deepgram", "--port", "9401", "--api-key", "k"]
    assert argv["fake-deepgram"][2:] == want
    assert "--api-key" not in argv["fake-mcp_server"]
    env = plan.env
    assert (env["ASR_PROVIDER"], env["AGENT_PROVIDER"], env["TTS_PROVIDER"]) == (
        "deepgram",
        "openai",
        "elevenlabs",
    )
    assert env["DEEPGRAM_URL"] == "ws://127.0.0.1:9401"
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:9101/v1"
    assert env["MCP_SERVER_URL"] == f"http://127.0.0.1:{plan.ports['mcp_server']}/mcp"
    assert env["ELEVENLABS_BASE_URL"] == f"http://127.0.0.1:{plan.ports['elevenlabs']}"
    assert env["DEEPGRAM_API_KEY"] == env["OPENAI_API_KEY"] == env["ELEVENLABS_API_KEY"] == "k"
    assert any("OpenAI" in line and "9101" in line for line in plan.describe())


def test_a_provider_given_a_url_is_not_faked_and_keeps_its_key() -> None:
    plan = plan_cloud(given={"OPENAI_BASE_URL": "http://gpu:8000/v1", "OPENAI_API_KEY": "mine"})
    assert "openai" not in plan.ports and len(plan.specs) == 3
    assert plan.env["OPENAI_BASE_URL"] == "http://gpu:8000/v1"
    assert plan.env["OPENAI_API_KEY"] == "mine"
    assert plan.env["DEEPGRAM_API_KEY"] == plan.api_key != "mine"


def test_the_stack_selects_providers_for_every_service() -> None:
    env = {"NATS_URL": "nats://127.0.0.1:4222", "REDIS_URL": "", "TWILIO_AUTH_TOKEN": "t"}
    st = Stack(env=env, output=None, providers="cloud")
    specs, _ = st._resolve()
    assert st.cloud is not None and len(st.cloud.specs) == 4
    for spec in specs:
        if spec.name != "nats":
            assert spec.env["TTS_PROVIDER"] == "elevenlabs", spec.name
            assert spec.env["DEEPGRAM_URL"] == st.cloud.env["DEEPGRAM_URL"]
    local, _ = Stack(env=env, output=None, providers="local")._resolve()
    assert {s.env.get("ASR_PROVIDER") for s in local if s.name != "nats"} == {"local"}
    with pytest.raises(ValueError):
        Stack(providers="aws")


def test_the_commands_take_the_providers_option() -> None:
    p = build_parser()
    assert p.parse_args(["up", "--providers", "cloud"]).providers == "cloud"
    assert p.parse_args(["demo", "--providers", "cloud"]).providers == "cloud"
    assert p.parse_args(["up"]).providers == "auto"
    assert p.parse_args(["fakes", "--api-key", "x"]).api_key == "x"
    with pytest.raises(SystemExit):
        p.parse_args(["up", "--providers", "aws"])
