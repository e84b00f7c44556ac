"""The built-in call tools: function schemas, bookings in Redis, the transfer allow-list."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import redis.asyncio as aioredis

from services.agent.knowledge import Knowledge
from services.agent.providers.base import HangupAction, TransferAction
from services.agent.store import Store
from services.agent.tools import CallTools
from shared.settings import Settings
from shared.transfer_targets import parse_targets


def sid() -> str:
    return "CA" + uuid4().hex


def tools(**settings: str) -> CallTools:
    return CallTools(settings=Settings(redis_url="", **settings))  # type: ignore[arg-type]


def test_schemas_are_openai_function_tools() -> None:
    schemas = tools().schemas()
    names = [s["function"]["name"] for s in schemas]
    assert names == ["hang_up", "lookup", "book_appointment", "list_appointments", "collect_digits"]
    for s in schemas:
        assert s["type"] == "function"
        assert s["function"]["description"]
        assert s["function"]["parameters"]["type"] == "object"
    book = next(s for s in schemas if s["function"]["name"] == "book_appointment")
    assert book["function"]["parameters"]["required"] == ["name", "when"]
    flat = tools().responses_schemas()
    assert flat[0]["name"] == "hang_up" and "function" not in flat[0]


def test_transfer_is_offered_only_to_configured_targets() -> None:
    t = tools(transfer_targets="front_desk=+15551230000, billing=+15551230001, nope=12345")
    assert t.transfer_targets == {"front_desk": "+15551230000", "billing": "+15551230001"}
    schema = next(s for s in t.schemas() if s["function"]["name"] == "transfer")
    assert schema["function"]["parameters"]["properties"]["to"]["enum"] == [
        "front_desk",
        "billing",
    ]
    assert t.transfer("Billing") == TransferAction(to="+15551230001")
    assert parse_targets("+15550001111") == {"+15550001111": "+15550001111"}


async def test_run_refuses_a_number_the_caller_talked_the_model_into() -> None:
    t = tools(transfer_targets="front_desk=+15551230000,billing=+15551230001")
    out = await t.run("transfer", {"to": "+19005550000"}, call_sid=sid())
    assert out.action is None and out.text.startswith("Tool error")
    ok = await t.run("transfer", {"to": "front_desk"}, call_sid=sid())
    assert ok.action == TransferAction(to="+15551230000")
    none = await tools().run("transfer", {"to": "front_desk"}, call_sid=sid())
    assert none.action is None and "Tool error" in none.text


async def test_run_hang_up_and_lookup() -> None:
    t = tools()
    hang = await t.run("hang_up", {}, call_sid=sid())
    assert isinstance(hang.action, HangupAction)
    found = await t.run("lookup", {"question": "Where can I park?"}, call_sid=sid())
    assert "parking" in found.text.lower()
    missing = await t.run("lookup", {"question": "weather on Mars"}, call_sid=sid())
    assert "no answer" in missing.text.lower()
    bad = await t.run("lookup", {"question": 42}, call_sid=sid())
    assert bad.text.startswith("Tool error")
    unknown = await t.run("format_disk", {}, call_sid=sid())
    assert unknown.text.startswith("Tool error")


async def test_bookings_are_stored_in_redis_per_call(redis_url: str) -> None:
    store = Store(url=redis_url)
    t = CallTools(settings=Settings(), store=store)
    call = sid()
    try:
        out = await t.run(
            "book_appointment", {"name": "Jane Doe", "when": "Tuesday at 10 am"}, call_sid=call
        )
        result = json.loads(out.text)
        assert result["booked"] is True
        code = result["confirmation"].replace(" ", "")
        assert len(code) == 6
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            stored = await r.hgetall(f"va:appt:{{{call}}}")
        finally:
            await r.aclose()
        assert json.loads(stored[code])["name"] == "Jane Doe"
        listed = await t.list_appointments(call)
        assert [(b.name, b.when) for b in listed] == [("Jane Doe", "Tuesday at 10 am")]
        assert await t.list_appointments(sid()) == []
        missing = await t.run("book_appointment", {"name": "", "when": "now"}, call_sid=call)
        assert missing.text.startswith("Tool error")
    finally:
        await store.aclose()


def test_knowledge_file_setting_overrides_the_default(tmp_path: Path) -> None:
    f = tmp_path / "k.md"
    f.write_text("# Bike Shop\n\n## repairs, fix, puncture\nWe fix punctures in an hour.\n")
    t = CallTools(settings=Settings(redis_url="", knowledge_file=f))
    assert t.knowledge.title == "Bike Shop"
    assert t.lookup("can you fix a puncture") == "We fix punctures in an hour."
    assert t.lookup("what are your opening hours") is None


def test_knowledge_parsing_ignores_intro_and_empty_topics() -> None:
    k = Knowledge.parse("# Title\nintro text\n## empty\n\n## hours, open\nNine to five.\nDaily.")
    assert k.topics == ["hours"]
    assert k.entries[0].answer == "Nine to five. Daily."
