"""Conversation history per call, in Redis (``va:`` keys), so any agent replica takes any turn.

Stored entries are chat-completions messages plus private ``_``-prefixed fields (the turn, and
for spoken replies the segments as published): the schema is :mod:`shared.history_entry`
(the gateway's transcript export reads the same entries). In memory an entry is its dict
(:meth:`HistoryEntry.as_dict`). :meth:`History.load` returns clean messages with truncations
applied and private fields removed, ready for a provider.

Truncation (barge-in): ``Played(complete=False)`` for segment ``seq`` of ``turn`` is recorded
in a separate hash and applied when history is read: that turn's reply becomes the segments
before ``seq`` plus the heard part of ``seq``. Recording rather than rewriting means it does
not matter whether the ``Played`` reaches Redis before or after the (possibly other) replica
that generated the turn has appended its reply: the gateway publishes both at barge-in.

Keys (all expire after ``ttl_s`` without writes): ``va:hist:<call>`` list of JSON entries,
``va:heard:<call>`` hash turn -> JSON, ``va:turn:<call>`` turn counter, ``va:gen:<call>`` the
turn being generated.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from services.agent.store import Store, call_key
from shared.callstate import PHI_LOOKUPS, VERIFIED, VERIFY_ATTEMPTS
from shared.history_entry import PRIVATE_PREFIX, BargeInCut, HistoryEntry, read_cuts
from shared.logging import kv
from shared.outbound import OutboundContext

log = logging.getLogger(__name__)

HISTORY_TTL_S = 24 * 3600.0
_VERIFICATION_KEYS = (VERIFIED, VERIFY_ATTEMPTS, PHI_LOOKUPS)  # services.agent.verification
OUTBOUND = "obctx"  # the outbound context of a call we placed (shared.outbound)
MAX_MESSAGES = 200  # older entries are dropped; a phone call rarely gets near this
GENERATING_TTL_S = 120.0  # a replica that dies mid-turn leaves no stale flag for long
SPEAKING_TTL_S = 60.0  # a lost Played must not mute backchannel-like answers for long


def user_message(text: str, *, turn: int) -> dict[str, Any]:
    """A caller message (what ASR heard, or a key press) for ``turn``."""
    return HistoryEntry.user(text, turn=turn).as_dict()


def spoken_message(segments: list[str], *, turn: int, seq0: int) -> dict[str, Any]:
    """An assistant reply as spoken: ``segments`` were published as seq ``seq0``, ``seq0+1``..."""
    return HistoryEntry.spoken(segments, turn=turn, seq0=seq0).as_dict()


def item_message(message: dict[str, Any], *, turn: int) -> dict[str, Any]:
    """A non-spoken item (a tool call or result) produced during ``turn``."""
    return HistoryEntry.item(message, turn=turn).as_dict()


def truncate_spoken(
    entries: list[dict[str, Any]], heard: dict[int, tuple[int, str]]
) -> list[dict[str, Any]]:
    """Apply barge-in truncations: ``heard`` maps turn -> (seq cut, heard text of that seq).

    Segments after the cut are removed; a reply of which nothing was heard disappears.
    ``heard_text`` may be that segment's heard part or the turn's whole heard text so far.
    """
    if not heard:
        return entries
    parsed = [_entry(e) for e in entries]
    out: list[dict[str, Any]] = []
    for e, entry in zip(entries, parsed, strict=True):
        if entry is None or entry.turn is None or entry.turn not in heard or entry.segs is None:
            out.append(e)
            continue
        cut, heard_text = heard[entry.turn]
        prior = " ".join(_turn_segments(parsed, entry.turn)[:cut])
        if prior and heard_text.startswith(prior):
            heard_text = heard_text[len(prior) :].strip()
        kept: list[str] = []
        for i, s in enumerate(entry.segs):
            seq = entry.seq0 + i
            if seq < cut:
                kept.append(s)
            elif seq == cut and heard_text.strip():
                kept.append(heard_text.strip())
        if kept:
            out.append(entry.cut_to(kept).as_dict())
    return out


def _entry(e: dict[str, Any]) -> HistoryEntry | None:
    try:
        return HistoryEntry.model_validate(e)
    except ValueError:
        return None  # not one of ours: kept as it is


def _turn_segments(entries: list[HistoryEntry | None], turn: int) -> list[str]:
    """All segments of ``turn`` in seq order (a turn may span several spoken entries)."""
    by_seq: dict[int, str] = {}
    for e in entries:
        if e is not None and e.turn == turn and e.segs is not None:
            for i, s in enumerate(e.segs):
                by_seq[e.seq0 + i] = s
    return [by_seq[k] for k in sorted(by_seq)]


def acted(entry: dict[str, Any]) -> dict[str, Any] | None:
    """What stays of a withdrawn turn's ``entry``: a tool call (without the words said with it)
    or a tool result; None for the caller's words and the spoken reply."""
    if entry.get("role") == "tool":
        return entry
    if entry.get("role") == "assistant" and entry.get("tool_calls"):
        return {**entry, "content": None}
    return None


def sanitize(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop tool calls without results and results without calls (trimmed or cancelled turns).

    Chat APIs reject a history where an assistant ``tool_calls`` message is not followed by a
    result for each call, or a ``tool`` message has no call before it.
    """
    answered = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
    out: list[dict[str, Any]] = []
    called: set[Any] = set()
    for m in messages:
        calls = m.get("tool_calls")
        if m.get("role") == "assistant" and calls:
            ids = {c.get("id") for c in calls if isinstance(c, dict)}
            if not ids <= answered:
                if m.get("content"):
                    out.append({k: v for k, v in m.items() if k != "tool_calls"})
                continue
            called |= ids
        elif m.get("role") == "tool" and m.get("tool_call_id") not in called:
            continue
        out.append(m)
    return out


MESSAGE_OVERHEAD_TOKENS = 4  # role and separators: what chat APIs bill per message
CHARS_PER_TOKEN = 3.0  # English runs ~4 characters a token: dividing by 3 overestimates


def estimate_tokens(message: dict[str, Any]) -> int:
    """A cheap, deterministic upper-ish estimate of what ``message`` costs in the prompt.

    No tokenizer is installed (and each model family has its own): the characters of the
    content and tool calls divided by :data:`CHARS_PER_TOKEN`, plus
    :data:`MESSAGE_OVERHEAD_TOKENS`. English text runs about four characters a token, so this
    errs on the side of sending less.
    """
    chars = 0
    content = message.get("content")
    if isinstance(content, str):
        chars += len(content)
    elif content is not None:
        chars += len(json.dumps(content, separators=(",", ":")))
    calls = message.get("tool_calls")
    if calls:
        chars += len(json.dumps(calls, separators=(",", ":")))
    return MESSAGE_OVERHEAD_TOKENS + math.ceil(chars / CHARS_PER_TOKEN)


def within_budget(messages: list[dict[str, Any]], max_tokens: int) -> list[dict[str, Any]]:
    """The newest messages whose estimated total (:func:`estimate_tokens`) fits ``max_tokens``.

    Oldest messages go first; a tool result whose call was dropped goes with it (and a call
    whose result was dropped keeps only its words: :func:`sanitize`). ``max_tokens <= 0``: no
    limit.
    """
    if max_tokens <= 0:
        return messages
    total = 0
    start = len(messages)
    for i in range(len(messages) - 1, -1, -1):
        total += estimate_tokens(messages[i])
        if total > max_tokens:
            break
        start = i
    return sanitize(messages[start:])


def public(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored entry without its private fields."""
    return {k: v for k, v in entry.items() if not k.startswith(PRIVATE_PREFIX)}


class History:
    """Per-call conversation history, turn ids and the 'generating' flag."""

    def __init__(
        self, *, store: Store, ttl_s: float = HISTORY_TTL_S, max_messages: int = MAX_MESSAGES
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_messages = max_messages

    async def next_turn(self, call_sid: str) -> int:
        """Allocate the call's next turn id (1, 2, ...; never reused within a call, also when
        Redis restarted empty: ids stay above every turn this replica has seen played)."""
        seen = int(self.store.memory.get(call_key("seen", call_sid)) or 0)
        return await self.store.incr(
            call_key("turn", call_sid), ttl_s=self.ttl_s, at_least=seen + 1
        )

    def saw_turn(self, call_sid: str, turn: int) -> None:
        """A turn of the call went out (any replica's): later turns must get higher ids."""
        key = call_key("seen", call_sid)
        if turn > int(self.store.memory.get(key) or 0):
            self.store.memory.put(key, turn, self.ttl_s)

    async def entries(self, call_sid: str) -> list[dict[str, Any]]:
        """Stored entries with truncations applied, private fields kept (for tests and tools)."""
        raw = await self.store.lrange(call_key("hist", call_sid))
        entries: list[dict[str, Any]] = []
        for item in raw:
            try:
                entries.append(HistoryEntry.from_stored(item).as_dict())
            except ValueError:
                log.warning("unreadable history entry dropped", **kv(call=call_sid))
        cuts = read_cuts(await self.store.hgetall(call_key("heard", call_sid)))
        heard = {turn: (cut.seq, cut.text) for turn, cut in cuts.items()}
        withdrawn = await self.store.hgetall(call_key("withdrawn", call_sid))
        if withdrawn:
            entries = [
                kept
                for e in entries
                if (kept := e if str(e.get(f"{PRIVATE_PREFIX}turn")) not in withdrawn else acted(e))
            ]
        return truncate_spoken(entries, heard)

    async def withdraw(self, call_sid: str, *, turn: int) -> None:
        """Leave ``turn`` (the caller's words and the reply) out of the conversation: the caller
        went on, and the next turn answers the whole sentence. What the reply *did* stays (its
        tool calls and their results, without its words): a booking made before the caller
        went on is still known to the next answer."""
        await self.store.hset(call_key("withdrawn", call_sid), str(turn), "1", ttl_s=self.ttl_s)

    async def load(self, call_sid: str) -> list[dict[str, Any]]:
        """The conversation so far, as clean chat messages, truncated to what was heard."""
        return sanitize([public(e) for e in await self.entries(call_sid)])

    async def append(self, call_sid: str, messages: list[dict[str, Any]]) -> None:
        """Append entries (built with :func:`user_message`, :func:`spoken_message`, ...)."""
        await self.store.rpush(
            call_key("hist", call_sid),
            [HistoryEntry.model_validate(m).stored() for m in messages],
            ttl_s=self.ttl_s,
            max_len=self.max_messages,
        )

    async def record_played(
        self, call_sid: str, *, turn: int, seq: int, heard_text: str, complete: bool
    ) -> None:
        """Apply a ``Played``: an incomplete segment truncates its turn's reply."""
        if complete:
            return
        rec = BargeInCut(seq=seq, text=heard_text).stored()
        # The first barge-in of a turn wins: later cuts of the same turn are its echoes.
        await self.store.hset(
            call_key("heard", call_sid), str(turn), rec, ttl_s=self.ttl_s, only_new=True
        )

    async def mark_speaking(self, call_sid: str, turn: int, last_seq: int | None = None) -> None:
        """The caller may be hearing ``turn``; ``last_seq`` is its last spoken segment, once known.

        Read by :meth:`speaking` to tell a backchannel said over the reply ("mm-hm") from an
        answer ("yeah" after a question), which must start a turn.
        """
        value = f"{turn}:{'' if last_seq is None else last_seq}"
        await self.store.put(call_key("speaking", call_sid), value, ttl_s=SPEAKING_TTL_S)

    async def spoken_until(self, call_sid: str, *, turn: int, last_seq: int) -> None:
        """The turn is generated: its last spoken segment is ``last_seq`` (if still current)."""
        key = call_key("speaking", call_sid)
        value = await self.store.get(key)
        if value == f"{turn}:":
            await self.mark_speaking(call_sid, turn, last_seq)

    async def heard(self, call_sid: str, *, turn: int, seq: int, complete: bool) -> None:
        """A ``Played``: the turn's last segment played, or the caller cut in: not speaking."""
        key = call_key("speaking", call_sid)
        value = await self.store.get(key)
        if value is None or not value.startswith(f"{turn}:"):
            return
        if not complete or value == f"{turn}:{seq}":
            await self.store.delete_if_equal(key, value)

    async def speaking(self, call_sid: str) -> bool:
        """Is agent audio (probably) still playing to the caller?"""
        return await self.store.get(call_key("speaking", call_sid)) is not None

    async def mark_generating(self, call_sid: str, turn: int) -> int | None:
        """Say ``turn`` is being generated; return the turn that was before (if unfinished)."""
        old = await self.store.swap(call_key("gen", call_sid), str(turn), ttl_s=GENERATING_TTL_S)
        try:
            return int(old) if old is not None else None
        except ValueError:
            return None

    async def done_generating(self, call_sid: str, turn: int) -> None:
        """Clear the flag if it still names ``turn`` (a newer turn may have replaced it)."""
        await self.store.delete_if_equal(call_key("gen", call_sid), str(turn))

    async def end_call(self, call_sid: str) -> None:
        """The call is over: drop its counters and the caller's verification (a call SID
        seen again must verify again); history and bookings expire with their TTL."""
        await self.store.delete(
            *(call_key(k, call_sid) for k in ("turn", "gen", *_VERIFICATION_KEYS))
        )

    async def set_outbound(self, call_sid: str, context: OutboundContext) -> None:
        """Remember why we placed this call (every later turn of any replica reads it)."""
        await self.store.put(
            call_key(OUTBOUND, call_sid), context.model_dump_json(), ttl_s=self.ttl_s
        )

    async def outbound(self, call_sid: str) -> OutboundContext | None:
        """The outbound context of the call (None: an inbound call)."""
        raw = await self.store.get(call_key(OUTBOUND, call_sid))
        if raw is None:
            return None
        try:
            return OutboundContext.model_validate_json(raw)
        except ValueError:
            return None

    def forget_local(self, call_sid: str) -> None:
        """Drop this process's mirror of the call (every replica, on ``CallEnded``)."""
        self.store.forget_local(
            *(
                call_key(k, call_sid)
                for k in (
                    *("hist", "heard", "withdrawn", "turn", "gen", "appt", "seen", OUTBOUND),
                    *_VERIFICATION_KEYS,
                )
            )
        )
