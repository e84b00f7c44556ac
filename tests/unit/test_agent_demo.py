"""The rule-based demo agent, driven turn by turn the way the worker drives it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from services.agent.providers.base import HangupAction, TransferAction, TurnInput, TurnKind
from services.agent.providers.demo import DemoAgent, clean_name, find_day, find_time
from services.agent.store import Store
from services.agent.tools import CallTools
from shared.settings import Settings


class Call:
    """One call's conversation: history grows as the worker would grow it."""

    def __init__(self, agent: DemoAgent) -> None:
        self.agent = agent
        self.sid = "CA" + uuid4().hex
        self.history: list[dict[str, Any]] = []
        self.actions: list[object] = []

    async def turn(self, kind: TurnKind, text: str = "", *, keys: str = "") -> str:
        inp = TurnInput(
            call_sid=self.sid, kind=kind, text=text, keys=keys, history=list(self.history)
        )
        said: list[str] = []
        self.actions = []
        async for out in self.agent.respond(inp):
            if isinstance(out, str):
                said.append(out)
            else:
                self.actions.append(out)
        reply = "".join(said)
        if kind == "utterance":
            self.history.append({"role": "user", "content": text})
        elif kind == "dtmf":
            self.history.append(
                {"role": "user", "content": f"(The caller pressed the key {text}.)"}
            )
        self.history.append({"role": "assistant", "content": reply})
        return reply

    async def say(self, text: str) -> str:
        return await self.turn("utterance", text)


def make_agent(store: Store | None = None, **settings: Any) -> DemoAgent:
    s = Settings(redis_url="", **settings)
    return DemoAgent(settings=s, tools=CallTools(settings=s, store=store))


@pytest.fixture
def call() -> Call:
    return Call(make_agent())


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[Store]:
    store = Store(url=redis_url)
    yield store
    await store.aclose()


async def test_greeting_is_honest_about_being_a_demo(call: Call) -> None:
    text = await call.turn("call_started")
    assert text.startswith("Hello")
    assert "not a language model" in text
    assert "opening hours" in text and "book an appointment" in text and "star" in text
    assert len(text) < 200, "a phone greeting must be short"
    assert call.actions == []


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What are your opening hours?", "Monday to Friday"),
        ("when do you open on saturday", "Saturdays"),
        ("What time do you close?", "6 pm"),
        ("Where are you located?", "42 Maple Street"),
        ("where are you", "42 Maple Street"),
        ("Is there parking?", "free parking"),
        ("where do I park my car", "free parking"),
        ("How much does a checkup cost?", "60 dollars"),
        ("Do you take insurance?", "insurance plans"),
        ("What services do you offer?", "physiotherapy"),
        ("do you do vaccinations", "vaccinations"),
    ],
)
async def test_answers_from_the_knowledge_file(call: Call, question: str, expected: str) -> None:
    text = await call.say(question)
    assert expected in text
    assert text.endswith("Is there anything else I can help with?")


async def test_unknown_question_says_what_it_can_do(call: Call) -> None:
    text = await call.say("What's the weather like on Mars?")
    assert "didn't understand" in text
    assert "opening hours" in text and "book an appointment" in text


async def test_booking_over_several_turns_is_stored_in_redis(
    redis_store: Store, redis_url: str
) -> None:
    call = Call(make_agent(redis_store))
    await call.turn("call_started")
    assert "What day and time" in await call.say("I'd like to book an appointment")
    assert "What time" in await call.say("next Tuesday please")
    assert "What name" in await call.say("at 10:30 am")
    confirm = await call.say("It's Jane Doe.")
    assert "next Tuesday at 10:30 am" in confirm and "Jane Doe" in confirm
    assert "Shall I book it?" in confirm
    done = await call.say("yes please")
    assert "You're booked for next Tuesday at 10:30 am" in done
    code = done.split("confirmation code is ")[1].split(".")[0].replace(" ", "")

    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stored = await r.hgetall(f"va:appt:{{{call.sid}}}")
    finally:
        await r.aclose()
    assert json.loads(stored[code]) | {"booked_at": 0} == {
        "confirmation": code,
        "name": "Jane Doe",
        "when": "next Tuesday at 10:30 am",
        "booked_at": 0,
    }
    listed = await call.say("What are my appointments?")
    assert "next Tuesday at 10:30 am" in listed and "Jane Doe" in listed


async def test_booking_in_one_sentence_and_declining_books_nothing(
    redis_store: Store,
) -> None:
    agent = make_agent(redis_store)
    call = Call(agent)
    assert "What name" in await call.say("Can I book an appointment tomorrow at 3pm?")
    assert "tomorrow at 3 pm" in await call.say("John Smith")
    assert "haven't booked anything" in await call.say("no")
    assert await agent._tools.list_appointments(call.sid) == []


async def test_state_comes_from_history_so_any_replica_continues_the_booking(
    redis_store: Store,
) -> None:
    first = Call(make_agent(redis_store))
    await first.say("book an appointment")
    await first.say("Friday morning")
    # The next turn lands on another replica: a new agent object, the same history.
    second = Call(make_agent(redis_store))
    second.sid, second.history = first.sid, first.history
    assert "Friday in the morning, for Ann Lee" in await second.say("my name is ann lee")


async def test_unheard_question_is_not_taken_as_answered(call: Call) -> None:
    await call.say("book an appointment")
    # The caller barged in before hearing the question: history is truncated to nothing.
    call.history[-1]["content"] = ""
    text = await call.say("Jane Doe")
    assert "Shall I book" not in text


async def test_question_in_the_middle_of_a_booking_is_answered_and_the_booking_goes_on(
    call: Call,
) -> None:
    await call.say("I want to make an appointment")
    text = await call.say("Are you open on Saturdays?")
    assert "Saturdays from 9 am" in text and text.endswith("What day and time would you like?")
    assert "What name" in await call.say("Saturday at 10 am")


async def test_cancel_during_booking(call: Call) -> None:
    await call.say("book")
    assert "cancelled" in await call.say("never mind")


async def test_goodbye_hangs_up(call: Call) -> None:
    text = await call.say("Thanks, that's all. Bye!")
    assert "Goodbye" in text
    assert call.actions == [HangupAction(reason="caller_goodbye")]


async def test_no_to_anything_else_ends_the_call(call: Call) -> None:
    await call.say("where are you?")
    await call.say("no thanks")
    assert call.actions and isinstance(call.actions[0], HangupAction)


async def test_dtmf_menu(call: Call) -> None:
    await call.turn("call_started")
    assert "Monday to Friday" in await call.turn("dtmf", "2")
    assert "What day and time" in await call.turn("dtmf", "1")
    assert "Press 1 to book" in await call.turn("dtmf", "*")
    assert "Press 1 to book" in await call.turn("dtmf", "9")


async def test_words_and_a_key_pressed_while_saying_them_get_one_answer(call: Call) -> None:
    await call.turn("call_started")
    # The words win when they are understood...
    assert "Monday to Friday" in await call.turn(
        "utterance", "What are your opening hours?", keys="1"
    )
    # ...and the key decides when they are not.
    assert "What day and time" in await call.turn("utterance", "um, the thing", keys="1")


async def test_dtmf_confirms_a_booking(redis_store: Store) -> None:
    agent = make_agent(redis_store)
    call = Call(agent)
    await call.say("book an appointment on Monday at 9 am")
    await call.say("Sam Green")
    done = await call.turn("dtmf", "1")
    assert "You're booked for Monday at 9 am" in done
    assert len(await agent._tools.list_appointments(call.sid)) == 1


async def test_person_request_transfers_only_when_configured() -> None:
    no_targets = Call(make_agent())
    assert "no one I can transfer you to" in await no_targets.say("Can I talk to a person?")
    assert no_targets.actions == []
    configured = Call(make_agent(transfer_targets="front_desk=+15551230000"))
    await configured.say("I want to speak to a receptionist")
    assert configured.actions == [TransferAction(to="+15551230000")]


async def test_fixed_prompts_are_marked_cacheable_but_caller_data_is_not(call: Call) -> None:
    agent = call.agent
    greeting = await call.turn("call_started")
    assert agent.cacheable(greeting.split(". ")[0] + ".")
    await call.say("book Monday at 9 am")
    confirm = await call.say("Sam Green")
    assert not any(agent.cacheable(s) for s in confirm.split(". ") if "Sam" in s)


def test_slot_parsers() -> None:
    assert find_day("how about next friday") == "next Friday"
    assert find_day("tomorrow works") == "tomorrow"
    assert find_time("ten a.m. please") == "at 10 am"
    assert find_time("at 4") == "at 4 o'clock"
    assert find_time("in the afternoon") == "in the afternoon"
    assert find_time("someone") is None
    assert clean_name("yes, my name is mary o'neil, thanks") == "Mary O'neil"
    assert clean_name("Forrest Gump") == "Forrest Gump"
