"""OpenAI agent pieces that need no server: error mapping, prompt, conversation, selection."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx2
import openai
import pytest

from services.agent.providers.base import TurnInput
from services.agent.providers.demo import DemoAgent
from services.agent.providers.openai import (
    DEFAULT_PROMPT_FILE,
    OpenAIAgent,
    load_prompt,
    turn_messages,
    wrap_error,
)
from services.agent.providers.select import make_provider
from services.agent.tools import CallTools
from shared.errors import ProviderAuthError, ProviderError, ProviderTimeout, ProviderUnavailable
from shared.settings import Settings

REQUEST = httpx2.Request("POST", "https://api.openai.com/v1/chat/completions")


def _status(code: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    response = httpx2.Response(code, headers=headers or {}, request=REQUEST)
    client = openai.OpenAI(api_key="k")
    return client._make_status_error("boom", body=None, response=response)


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, redis_url="", **kw)  # type: ignore[call-arg, arg-type]


def test_401_and_403_are_auth_errors_never_retried() -> None:
    for code in (401, 403):
        err = wrap_error(_status(code))
        assert isinstance(err, ProviderAuthError) and not err.retryable and err.status == code


def test_429_carries_retry_after_seconds_or_milliseconds() -> None:
    err = wrap_error(_status(429, {"retry-after": "3"}))
    assert err.retryable and err.retry_after == 3.0 and err.status == 429
    err = wrap_error(_status(429, {"retry-after-ms": "250", "retry-after": "3"}))
    assert err.retry_after == 0.25


def test_server_errors_and_dropped_connections_are_retryable() -> None:
    assert wrap_error(_status(500)).retryable and wrap_error(_status(503)).retryable
    assert wrap_error(openai.APIConnectionError(request=REQUEST)).retryable
    timeout = wrap_error(openai.APITimeoutError(request=REQUEST))
    assert isinstance(timeout, ProviderTimeout) and timeout.retryable


def test_a_bad_request_is_not_retried() -> None:
    err = wrap_error(_status(400))
    assert type(err) is ProviderError and not err.retryable and err.status == 400


def test_bundled_persona_is_written_for_the_phone() -> None:
    prompt = load_prompt(None)
    assert prompt == DEFAULT_PROMPT_FILE.read_text().strip()
    assert "no markdown" in prompt and "Riverside Family Clinic" in prompt
    # Records only about the member verified on this call, never "whoever the caller names".
    assert "member or order the caller names" not in prompt
    assert "only about the member verified on this call" in " ".join(prompt.split())


def test_a_custom_prompt_file_replaces_the_persona(tmp_path: Path) -> None:
    path = tmp_path / "persona.md"
    path.write_text("You are Ada, the bakery's phone assistant.\n")
    assert load_prompt(path) == "You are Ada, the bakery's phone assistant."


def test_conversation_is_persona_then_history_then_the_new_words() -> None:
    history = [{"role": "assistant", "content": "Hello, how can I help?"}]
    turn = TurnInput(call_sid="CA1", kind="utterance", text="Are you open today?", history=history)
    messages = turn_messages(turn, system_prompt="persona")
    assert messages == [
        {"role": "system", "content": "persona"},
        history[0],
        {"role": "user", "content": "Are you open today?"},
    ]
    greet = turn_messages(TurnInput(call_sid="CA1", kind="call_started"), system_prompt="p")
    assert greet[-1]["role"] == "system" and "Greet" in greet[-1]["content"]


def test_auto_picks_openai_with_a_key_or_a_compatible_server() -> None:
    with_key = _settings(openai_api_key="sk-test")
    tools = CallTools(settings=with_key)
    assert isinstance(make_provider(with_key, tools, None), OpenAIAgent)
    keyless = _settings(openai_base_url="http://127.0.0.1:11434/v1")  # e.g. Ollama
    assert isinstance(make_provider(keyless, tools, None), OpenAIAgent)
    assert isinstance(make_provider(_settings(), tools, None), DemoAgent)


def test_explicit_openai_without_key_or_server_fails_fast() -> None:
    settings = _settings(agent_provider="openai")
    with pytest.raises(ProviderAuthError):
        make_provider(settings, CallTools(settings=settings), None)


def test_missing_sdk_names_the_cloud_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    monkeypatch.delitem(sys.modules, "services.agent.providers.openai")
    explicit = _settings(agent_provider="openai", openai_api_key="sk-test")
    with pytest.raises(ProviderUnavailable, match=r"voiceagent\[cloud\]"):
        make_provider(explicit, CallTools(settings=explicit), None)
    auto = _settings(openai_api_key="sk-test")
    assert isinstance(make_provider(auto, CallTools(settings=auto), None), DemoAgent)
    assert any("'cloud' extra" in r.getMessage() for r in caplog.records)
