"""Conversation history in Redis: turns, truncation on barge-in, and surviving Redis outages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from services.agent.history import (
    History,
    item_message,
    sanitize,
    spoken_message,
    truncate_spoken,
    user_message,
)
from services.agent.store import Store


def sid() -> str:
    return "CA" + uuid4().hex


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def history(redis_url: str) -> AsyncIterator[History]:
    store = Store(url=redis_url)
    yield History(store=store)
    await store.aclose()


async def test_history_round_trips_through_redis_for_any_replica(
    history: History, redis_url: str
) -> None:
    call = sid()
    await history.append(call, [user_message("What are your hours?", turn=1)])
    await history.append(
        call, [spoken_message(["We open at 8.", "We close at 6."], turn=1, seq0=0)]
    )
    # A second replica (its own connection and empty mirror) sees the same conversation.
    other_store = Store(url=redis_url)
    try:
        other = History(store=other_store)
        assert await other.load(call) == [
            {"role": "user", "content": "What are your hours?"},
            {"role": "assistant", "content": "We open at 8. We close at 6."},
        ]
    finally:
        await other_store.aclose()
    r = aioredis.Redis.from_url(redis_url)
    try:
        ttl = await r.ttl(f"va:hist:{{{call}}}")
        assert 0 < ttl <= 24 * 3600
    finally:
        await r.aclose()


async def test_turn_ids_increase_per_call(history: History) -> None:
    a, b = sid(), sid()
    assert [await history.next_turn(a) for _ in range(3)] == [1, 2, 3]
    assert await history.next_turn(b) == 1


async def test_turn_ids_stay_above_played_turns_when_redis_comes_back_empty(
    history: History, redis_url: str
) -> None:
    # Replica A handed out turns 1-2; this replica only saw them played. Redis then restarts
    # with no data: its counter starts over, yet the next id must be 3 (the gateway drops audio
    # of a turn id it has already played), and Redis is moved past it for the other replicas.
    call = sid()
    history.saw_turn(call, 1)
    history.saw_turn(call, 2)
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.delete(f"va:turn:{{{call}}}")
        assert await history.next_turn(call) == 3
        assert int(await r.get(f"va:turn:{{{call}}}")) == 3
    finally:
        await r.aclose()
    assert await history.next_turn(call) == 4


async def test_barge_in_truncates_the_reply_to_what_was_heard(history: History) -> None:
    call = sid()
    await history.append(call, [user_message("Tell me about parking", turn=1)])
    segs = ["Parking is free.", "It is behind the building.", "Enter from Birch Lane."]
    await history.append(call, [spoken_message(segs, turn=1, seq0=0)])
    # The caller cut in during the second sentence, having heard "It is behind".
    await history.record_played(call, turn=1, seq=1, heard_text="It is behind", complete=False)
    msgs = await history.load(call)
    assert msgs[-1] == {"role": "assistant", "content": "Parking is free. It is behind"}


async def test_truncation_recorded_before_the_reply_is_stored_still_applies(
    history: History,
) -> None:
    # The gateway publishes Interrupt and Played together: the Played may be handled before
    # the generating replica has stored the cancelled reply.
    call = sid()
    await history.record_played(call, turn=2, seq=0, heard_text="Sure, let", complete=False)
    await history.append(call, [spoken_message(["Sure, let me check.", "Done."], turn=2, seq0=0)])
    assert (await history.load(call))[-1]["content"] == "Sure, let"


async def test_complete_played_changes_nothing_and_unheard_reply_disappears(
    history: History,
) -> None:
    call = sid()
    await history.append(
        call,
        [
            user_message("hi", turn=1),
            spoken_message(["Hello!"], turn=1, seq0=0),
            user_message("hours?", turn=2),
            spoken_message(["We open at 8."], turn=2, seq0=0),
        ],
    )
    await history.record_played(call, turn=1, seq=0, heard_text="Hello!", complete=True)
    await history.record_played(call, turn=2, seq=0, heard_text="", complete=False)
    assert await history.load(call) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "hours?"},
    ]


def test_cumulative_heard_text_is_understood_too() -> None:
    entries = [spoken_message(["One.", "Two.", "Three."], turn=4, seq0=0)]
    out = truncate_spoken(entries, {4: (2, "One. Two. Thr")})
    assert out[0]["content"] == "One. Two. Thr"


def test_turn_split_around_a_tool_call_is_truncated_across_entries() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    entries = [
        spoken_message(["Let me check."], turn=3, seq0=0),
        item_message({"role": "assistant", "content": None, "tool_calls": [call]}, turn=3),
        item_message({"role": "tool", "tool_call_id": "c1", "content": "8 to 6"}, turn=3),
        spoken_message(["We open at 8.", "We close at 6."], turn=3, seq0=1),
    ]
    out = truncate_spoken(entries, {3: (1, "We op")})
    assert [e["content"] for e in out] == ["Let me check.", None, "8 to 6", "We op"]


def test_sanitize_drops_dangling_tool_calls_and_orphan_results() -> None:
    call = {"id": "c9", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    msgs = [
        {"role": "tool", "tool_call_id": "c0", "content": "orphan"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call]},  # no result
    ]
    assert sanitize(msgs) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Checking."},
    ]


async def test_a_withdrawn_turn_leaves_its_words_but_keeps_what_it_did(history: History) -> None:
    """The caller went on after "Yes." and its reply was withdrawn: the booking that reply made
    is still in the conversation (so the next answer does not book again), its words are not."""
    call = sid()
    booked = {"id": "b1", "type": "function", "function": {"name": "book", "arguments": "{}"}}
    await history.append(call, [user_message("Shall I book it?", turn=1)])
    await history.append(
        call,
        [
            user_message("Yes.", turn=2),
            item_message({"role": "assistant", "content": "OK.", "tool_calls": [booked]}, turn=2),
            item_message({"role": "tool", "tool_call_id": "b1", "content": "booked"}, turn=2),
            spoken_message(["Done, you're booked."], turn=2, seq0=0),
        ],
    )
    await history.withdraw(call, turn=2)
    assert await history.load(call) == [
        {"role": "user", "content": "Shall I book it?"},
        {"role": "assistant", "content": None, "tool_calls": [booked]},
        {"role": "tool", "tool_call_id": "b1", "content": "booked"},
    ]


async def test_generating_flag_names_the_unfinished_turn(history: History) -> None:
    call = sid()
    assert await history.mark_generating(call, 1) is None
    assert await history.mark_generating(call, 2) == 1  # turn 1 never finished
    await history.done_generating(call, 1)  # too late: turn 2 owns the flag
    await history.done_generating(call, 2)
    assert await history.mark_generating(call, 3) is None


async def test_redis_down_falls_back_to_memory_without_failing() -> None:
    store = Store(url=f"redis://127.0.0.1:{closed_port()}/0", op_timeout_s=0.2)
    history = History(store=store)
    call = sid()
    started = time.monotonic()
    assert await history.next_turn(call) == 1
    assert await history.next_turn(call) == 2
    await history.append(call, [user_message("hello", turn=1)])
    await history.append(call, [spoken_message(["Hi there."], turn=1, seq0=0)])
    await history.record_played(call, turn=1, seq=0, heard_text="Hi", complete=False)
    assert await history.load(call) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi"},
    ]
    assert time.monotonic() - started < 2.0, "a dead Redis must not stall turns"
    assert not store.redis_up
    await store.aclose()


async def test_empty_redis_url_is_single_process_memory_mode() -> None:
    store = Store(url="")
    history = History(store=store)
    call = sid()
    assert await history.next_turn(call) == 1
    await history.append(call, [user_message("hi", turn=1)])
    assert await history.load(call) == [{"role": "user", "content": "hi"}]
    assert not store.uses_redis


class _Proxy:
    """A TCP proxy to Redis that can be cut and restored: a Redis outage on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = closed_port()
        self._server: asyncio.Server | None = None
        self._conns: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in self._conns:
            w.close()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._conns += [writer, up_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


async def test_outage_degrades_then_redis_is_used_again(redis_url: str) -> None:
    proxy = _Proxy(aioredis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"])
    await proxy.start()
    db = redis_url.rsplit("/", 1)[-1]
    store = Store(url=f"redis://127.0.0.1:{proxy.port}/{db}", op_timeout_s=0.2, retry_after_s=0.1)
    history = History(store=store)
    call = sid()
    try:
        assert await history.next_turn(call) == 1
        await history.append(call, [user_message("before", turn=1)])
        assert store.redis_up

        await proxy.stop()  # Redis goes away mid-call
        assert await history.next_turn(call) == 2
        await history.append(call, [user_message("during", turn=2)])
        assert [m["content"] for m in await history.load(call)] == ["before", "during"]
        assert not store.redis_up

        await proxy.start()  # and comes back
        await asyncio.sleep(0.15)
        turn = await history.next_turn(call)
        assert turn == 3, "turn ids never go backwards across an outage"
        assert store.redis_up
        await history.append(call, [user_message("after", turn=3)])
        direct = Store(url=redis_url)
        try:
            stored = [m["content"] for m in await History(store=direct).load(call)]
        finally:
            await direct.aclose()
        # Redis has what was written while it was up (the outage's writes stayed local).
        assert stored == ["before", "after"]
    finally:
        await store.aclose()
        await proxy.stop()


def test_history_budget_drops_oldest_first_and_never_leaves_a_tool_result_alone() -> None:
    from services.agent.history import estimate_tokens, within_budget

    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "x", "arguments": "{}"}}
        ],
    }
    result = {"role": "tool", "tool_call_id": "c1", "content": "r" * 30}
    messages = [
        {"role": "user", "content": "a" * 300},
        call,
        result,
        {"role": "assistant", "content": "b" * 30},
        {"role": "user", "content": "c" * 30},
    ]
    assert within_budget(messages, 0) == messages  # 0: no limit
    tail = messages[2:]
    budget = sum(estimate_tokens(m) for m in tail)
    # The budget reaches back to the tool result but not its call: the result goes too.
    assert within_budget(messages, budget) == messages[3:]
    kept = within_budget(messages, budget + estimate_tokens(call))
    assert kept == messages[1:]
    assert within_budget(messages, 1) == []
