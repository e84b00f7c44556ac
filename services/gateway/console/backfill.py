"""What a console viewer sees on opening: live calls so far, and the calls of the last hour.

Read from the ``VOICE_EVENTS`` stream (:mod:`shared.callevents`): the events of the last
``HISTORY_S`` tell which calls are live (no ``call.ended``) and how the others ended; each live
call's transcripts, replies and control are then read whole. Ended calls get one ``summary``
item each (outcome, duration, turns, latency, cost when the final event carries one): no text.

The viewer subscribes to the live feed *before* the store is read, so nothing falls between the
two; what both carry is sent once (``keys``: the stored messages' identities).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS

from services.gateway.console.feed import Item, feed_item, message_key
from shared import callevents, subjects
from shared.callevents import StoredMessage

HISTORY_S = 3600.0  # ended calls shown, and how far back live calls are looked for
STALE_S = 900.0  # a call silent this long without call.ended (its gateway died) is not live
MAX_LIVE = 200
MAX_ENDED = 200
START_SLACK_S = 5.0  # read a live call's messages from a little before its first event


@dataclass
class Backfill:
    """Items to send before the live feed, and what they already cover."""

    items: list[Item] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set)
    events: list[Item] = field(default_factory=list)  # every event of the window (statistics)
    live: set[str] = field(default_factory=set)


def _cost_fields(data: dict[str, Any]) -> dict[str, Any]:
    # Cost per call, once the final event carries it (``cost``, ``cost_usd``, ...).
    return {k: v for k, v in data.items() if k == "cost" or k.startswith("cost_")}


def summary_item(call: str, events: list[Item]) -> Item:
    """One ended call as the console's card shows it (from its events: no PHI)."""
    ended = next(e for e in reversed(events) if e["name"] == "call.ended")
    data = ended.get("data") or {}
    v2v = [
        float(e["data"]["voice_to_voice_ms"])
        for e in events
        if e["name"] == "turn.first_audio"
        and isinstance((e.get("data") or {}).get("voice_to_voice_ms"), int | float)
    ]
    v2v.sort()
    return {
        "kind": "summary",
        "call": call,
        "at": ended["at"],
        "started_at": min(e["at"] for e in events),
        "ended_at": ended["at"],
        "reason": data.get("reason") or "",
        "duration_s": data.get("duration_s"),
        "turns": sum(1 for e in events if e["name"] == "turn.first_audio"),
        "barge_ins": sum(1 for e in events if e["name"] == "barge_in"),
        "p50_ms": v2v[len(v2v) // 2] if v2v else None,
        **_cost_fields(data),
    }


_Stored = tuple[int, bytes, Item]  # stream sequence, message key, feed item


def _items(messages: Iterable[StoredMessage]) -> list[_Stored]:
    out: list[_Stored] = []
    for m in messages:
        item = feed_item(m.subject, m.data)
        if item is not None:
            out.append((m.seq, message_key(m.subject, m.data), item))
    return out


def _superseded(item: Item, finals: set[tuple[str, int]]) -> bool:
    # An utterance's interim texts are replaced by its final: only the final is worth sending.
    return (
        item["kind"] == "caller"
        and not item["final"]
        and (item["call"], item["utterance"]) in finals
    )


async def load(nc: NATS, *, local_calls: Iterable[str], now: float | None = None) -> Backfill:
    """Read the store (raises :class:`nats.js.errors.NotFoundError` without the stream)."""
    now = time.time() if now is None else now
    stored = _items(await callevents.read(nc, subjects.ALL_EVENTS, since=now - HISTORY_S))
    by_call: dict[str, list[Item]] = {}
    keyed: dict[str, list[_Stored]] = {}
    for entry in stored:
        by_call.setdefault(entry[2]["call"], []).append(entry[2])
        keyed.setdefault(entry[2]["call"], []).append(entry)
    local = set(local_calls)
    live: dict[str, float] = {}
    ended: list[Item] = []
    for call, events in by_call.items():
        if any(e["name"] == "call.ended" for e in events):
            ended.append(summary_item(call, events))
        elif call in local or now - max(e["at"] for e in events) < STALE_S:
            live[call] = min(e["at"] for e in events) - START_SLACK_S
    live = dict(sorted(live.items(), key=lambda kv: kv[1])[-MAX_LIVE:])
    ended.sort(key=lambda s: s["started_at"])
    out = Backfill(events=[e[2] for e in stored], live=set(live), items=ended[-MAX_ENDED:])
    rest = _items(await callevents.read_calls(nc, live)) if live else []
    mine = sorted([e for call in live for e in keyed[call]] + rest, key=lambda e: e[0])
    finals = {
        (i["call"], i["utterance"]) for _, _, i in mine if i["kind"] == "caller" and i["final"]
    }
    for _, key, item in mine:
        out.keys.add(key)  # interims left out too: their live copy must not follow the final
        if not _superseded(item, finals):
            out.items.append(item)
    return out
