"""The OpenAI agent's side of turn-taking: keys as user messages, fixed prompts without a model
round trip (the base URL points at a closed port: any request would fail), keypad entry tool."""

from __future__ import annotations

import json

from services.agent.digits import DigitCollector
from services.agent.fixed_prompts import SILENCE_GOODBYE, STILL_THERE
from services.agent.providers.base import HangupAction, TurnInput
from services.agent.providers.openai import OpenAIAgent, turn_messages
from services.agent.store import Store
from services.agent.tools import CallTools
from shared.settings import Settings
from tests.conftest import _free_port

GREETING = "Hello, thanks for calling Example Clinic. How can I help you today?"


def agent() -> tuple[OpenAIAgent, CallTools]:
    settings = Settings(
        openai_base_url=f"http://127.0.0.1:{_free_port()}/v1",
        redis_url="",
        agent_greeting=GREETING,
        provider_timeout_s=1.0,
        provider_retries=0,
    )
    tools = CallTools(settings=settings, store=Store(url=""))
    return OpenAIAgent(settings=settings, tools=tools, mcp=None), tools


async def run(a: OpenAIAgent, kind: str, text: str = "") -> list[object]:
    return [o async for o in a.respond(TurnInput(call_sid="CA1", kind=kind, text=text))]  # type: ignore[arg-type]


def test_keys_reach_the_model_as_user_messages() -> None:
    key = turn_messages(TurnInput(call_sid="CA1", kind="dtmf", text="1"), system_prompt="p")
    assert key[-1] == {"role": "user", "content": "[caller pressed 1]"}
    entry = turn_messages(
        TurnInput(call_sid="CA1", kind="digits", text="123456"), system_prompt="p"
    )
    assert entry[-1] == {"role": "user", "content": "[caller entered 123456 on the keypad]"}
    both = turn_messages(
        TurnInput(call_sid="CA1", kind="utterance", text="I'd like to book", keys="1"),
        system_prompt="p",
    )
    assert both[-1] == {"role": "user", "content": "[caller pressed 1] I'd like to book"}


async def test_prompts_and_greeting_are_fixed_and_cacheable() -> None:
    a, _ = agent()
    assert await run(a, "silence") == [STILL_THERE]
    out = await run(a, "silence", "final")
    assert out[0] == SILENCE_GOODBYE and isinstance(out[1], HangupAction)
    limit = await run(a, "call_limit")
    assert "time limit" in str(limit[0]) and isinstance(limit[1], HangupAction)
    assert await run(a, "call_started") == [GREETING]
    assert a.cacheable(STILL_THERE)
    assert a.cacheable("How can I help you today?"), "greeting sentences are cached"
    assert not a.cacheable("Your appointment is on Tuesday.")
    await a.aclose()


async def test_collect_digits_tool_starts_a_keypad_entry() -> None:
    a, tools = agent()
    assert any(s["function"]["name"] == "collect_digits" for s in a.tool_schemas())
    out = await tools.run(
        "collect_digits", {"prompt": "Please type your member ID.", "num_digits": 6}, call_sid="CA9"
    )
    assert "Please type your member ID." in out.text
    req = await DigitCollector(store=tools.store).request("CA9")
    assert req is not None and req.num_digits == 6 and req.finish_on_key == "#"
    bad = await tools.run("collect_digits", {"prompt": "x", "num_digits": 0}, call_sid="CA9")
    assert bad.text.startswith("Tool error")
    assert json.dumps(a.tool_schemas())  # serializable as sent to the model
    await a.aclose()
