"""The fake OpenAI model's script: it calls the offered tools with valid arguments."""

from __future__ import annotations

import itertools
import json
from typing import Any

import jsonschema
import pytest

from services.agent.tools import CallTools
from shared.settings import Settings
from voiceagent.fakes.mcp_server import insurance_status
from voiceagent.fakes.openai import DEFAULT_ANSWER, GOODBYE, GREETING, decide

INSURANCE_TOOL = {
    "type": "function",
    "function": {
        "name": "check_insurance",
        "description": "Check coverage",
        "parameters": {
            "type": "object",
            "properties": {"member_id": {"type": "string"}},
            "required": ["member_id"],
        },
    },
}


@pytest.fixture(scope="module")
def builtin_tools() -> list[dict[str, Any]]:
    settings = Settings(_env_file=None, transfer_targets="front_desk=+15550100", redis_url="")  # type: ignore[call-arg]
    return CallTools(settings=settings).schemas()


def _schema_of(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(t["function"]["parameters"] for t in tools if t["function"]["name"] == name)


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "persona"}, {"role": "user", "content": text}]


def test_greets_when_the_caller_has_not_spoken() -> None:
    decision = decide([{"role": "system", "content": "p"}], [], call_ids=itertools.count())
    assert decision.content == GREETING and not decision.tool_calls


@pytest.mark.parametrize(
    ("text", "tool"),
    [
        ("Thank you, goodbye.", "hang_up"),
        ("Can I talk to someone at the front desk?", "transfer"),
        (
            "I'd like to book an appointment for Tuesday at 10 am, my name is Ana Lima.",
            "book_appointment",
        ),
        ("What are your opening hours?", "lookup"),
    ],
)
def test_builtin_tool_calls_validate_against_their_schemas(
    builtin_tools: list[dict[str, Any]], text: str, tool: str
) -> None:
    decision = decide(_user(text), builtin_tools, call_ids=itertools.count())
    assert [c.name for c in decision.tool_calls] == [tool]
    args = json.loads(decision.tool_calls[0].arguments)
    jsonschema.validate(args, _schema_of(builtin_tools, tool))


def test_booking_arguments_carry_the_callers_name_and_time(
    builtin_tools: list[dict[str, Any]],
) -> None:
    text = "I'd like to book an appointment for Tuesday at 10 am, my name is Ana Lima."
    call = decide(_user(text), builtin_tools, call_ids=itertools.count()).tool_calls[0]
    assert json.loads(call.arguments) == {"name": "Ana Lima", "when": "tuesday at 10 am"}


def test_an_unoffered_tool_is_never_called() -> None:
    decision = decide(_user("Is my insurance still active?"), [], call_ids=itertools.count())
    assert decision.content == DEFAULT_ANSWER and not decision.tool_calls


def test_mcp_tool_gets_the_member_id_from_the_words() -> None:
    text = "Can you check my insurance? My member ID is MBR-12345."
    call = decide(_user(text), [INSURANCE_TOOL], call_ids=itertools.count()).tool_calls[0]
    assert call.name == "check_insurance"
    assert json.loads(call.arguments) == {"member_id": "MBR-12345"}


def test_after_a_tool_result_it_reads_the_result_back() -> None:
    result = insurance_status("MBR-12345")
    messages = [
        *_user("Check my insurance, member MBR-12345"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "check_insurance", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    decision = decide(messages, [INSURANCE_TOOL], call_ids=itertools.count())
    assert result in decision.content and not decision.tool_calls


def test_after_hang_up_it_says_goodbye() -> None:
    messages = [
        *_user("bye"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "hang_up", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "The call will end."},
    ]
    assert decide(messages, [], call_ids=itertools.count()).content == GOODBYE
