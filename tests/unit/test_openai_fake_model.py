"""The fake OpenAI model's script: it calls the offered tools with valid arguments."""

from __future__ import annotations

import itertools
import json
from typing import Any

import jsonschema
import pytest

from devkit.fakes.mcp_server import insurance_status
from devkit.fakes.openai import DEFAULT_ANSWER, GOODBYE, GREETING, decide
from services.agent.tools import CallTools
from shared.settings import Settings

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


VERIFY_TOOL = {
    "type": "function",
    "function": {
        "name": "verify_member",
        "description": "Verify the caller",
        "parameters": {
            "type": "object",
            "properties": {"member_id": {"type": "string"}, "date_of_birth": {"type": "string"}},
            "required": ["member_id", "date_of_birth"],
        },
    },
}


def test_records_asked_before_verification_the_model_asks_to_verify() -> None:
    from devkit.fakes.openai import ASK_VERIFY

    decision = decide(
        _user("Is my insurance active? Member MBR-1."), [VERIFY_TOOL], call_ids=itertools.count()
    )
    assert decision.content == ASK_VERIFY and not decision.tool_calls


@pytest.mark.parametrize(
    "born", ["April 12, 1980", "12th of April 1980", "1980-04-12", "04/12/1980", "April 12th 1980"]
)
def test_it_verifies_first_then_does_what_the_caller_asked(born: str) -> None:
    text = f"Check my insurance, member ID MBR-12345, date of birth {born}."
    ids = itertools.count()
    first = decide(_user(text), [VERIFY_TOOL], call_ids=ids)
    (call,) = first.tool_calls
    assert call.name == "verify_member"
    assert json.loads(call.arguments) == {"member_id": "MBR-12345", "date_of_birth": "1980-04-12"}
    conversation = [
        *_user(text),
        {"role": "assistant", "content": None, "tool_calls": [_wire(call)]},
        {"role": "tool", "tool_call_id": call.id, "content": "Verified: member MBR-12345."},
    ]
    # Verified: the lookups are offered now, and the model calls the one the caller wanted.
    then = decide(conversation, [INSURANCE_TOOL], call_ids=ids)
    assert [c.name for c in then.tool_calls] == ["check_insurance"]
    failed = [*conversation[:-1], {**conversation[-1], "content": "Tool error: no match."}]
    refused = decide(failed, [VERIFY_TOOL], call_ids=ids)
    assert "Sorry. no match." in refused.content and not refused.tool_calls


def test_max_tokens_cuts_the_content_and_finishes_with_length() -> None:
    from devkit.fakes.openai import Decision, limit_tokens

    cut = limit_tokens(Decision(content="one two three four five"), 3)
    assert cut.content == "one two three" and cut.finish_reason == "length"
    whole = limit_tokens(Decision(content="one two"), 3)
    assert whole.content == "one two" and whole.finish_reason == "stop"


def _wire(call: Any) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def test_a_records_request_with_a_full_date_verifies_though_birth_was_misheard() -> None:
    # What whisper made of "date of birth" in one CI run: a model still reads an identity.
    text = "Can you check the insurance for member 842, date of 1 January 15, 1990?"
    (call,) = decide(_user(text), [VERIFY_TOOL], call_ids=itertools.count()).tool_calls
    assert call.name == "verify_member"
    assert json.loads(call.arguments) == {"member_id": "842", "date_of_birth": "1990-01-15"}
    # No date at all: still asked to verify, never verified on a guess.
    from devkit.fakes.openai import ASK_VERIFY

    asked = decide(
        _user("Check the insurance for member 842."), [VERIFY_TOOL], call_ids=itertools.count()
    )
    assert asked.content == ASK_VERIFY and not asked.tool_calls
