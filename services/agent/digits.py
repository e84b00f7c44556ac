"""Keypad entry: the agent asks for digits, the next key presses become one caller input.

An agent (the demo's member-id flow, or the model through the ``collect_digits`` tool) calls
:meth:`DigitCollector.start`; from then on the worker feeds every ``Dtmf`` of the call to
:meth:`DigitCollector.on_digit` instead of starting a turn per key. The entry completes when
``num_digits`` digits are in, when ``finish_on_key`` is pressed (not part of the entry), or
``timeout_s`` after the last key (:meth:`DigitCollector.expire`); the worker then runs one
turn of kind ``digits`` with the entry as its text. A spoken utterance cancels the entry.

State lives in the agent store (Redis when configured), so any replica may receive any key:
the request is a hash ``va:dgt:<call>``, the keys a list ``va:dgtk:<call>`` (``RPUSH`` is atomic,
so keys handled by two replicas at once are both kept). A request nobody answers expires
:data:`FIRST_KEY_S` after it started; keys pressed later are ordinary key presses again.
The inter-key timer runs in the replica that took the last key: if that replica dies, the
entry completes only when the caller presses ``finish_on_key`` (or speaks).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from services.agent.store import Store, call_key
from shared.logging import kv

log = logging.getLogger(__name__)

FIRST_KEY_S = 30.0  # a request with no key at all this long after it started is dropped
DEFAULT_TIMEOUT_S = 5.0  # after the last key (Twilio <Gather>'s default)
MAX_DIGITS = 32
_TTL_S = 600.0
_VALID_FINISH = frozenset("#*")


@dataclass(frozen=True, kw_only=True)
class DigitRequest:
    """What the agent asked for: up to ``num_digits`` keys, ended early by ``finish_on_key``."""

    num_digits: int
    finish_on_key: str = "#"
    timeout_s: float = DEFAULT_TIMEOUT_S
    started: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.num_digits <= MAX_DIGITS:
            raise ValueError(f"num_digits must be 1..{MAX_DIGITS}")
        if self.finish_on_key not in _VALID_FINISH and self.finish_on_key != "":
            raise ValueError("finish_on_key must be '#', '*' or empty")
        if not 0.5 <= self.timeout_s <= 60:
            raise ValueError("timeout_s must be 0.5..60")

    def to_json(self) -> str:
        return json.dumps(
            {
                "n": self.num_digits,
                "finish": self.finish_on_key,
                "timeout": self.timeout_s,
                "started": self.started,
            }
        )

    @classmethod
    def from_json(cls, data: str) -> DigitRequest:
        d = json.loads(data)
        return cls(
            num_digits=int(d["n"]),
            finish_on_key=str(d["finish"]),
            timeout_s=float(d["timeout"]),
            started=float(d["started"]),
        )


@dataclass(frozen=True, kw_only=True)
class DigitProgress:
    """A key taken into an entry: ``done`` with the ``entry``, or still ``waiting_s`` for more."""

    done: bool
    entry: str
    count: int
    waiting_s: float


def dtmf_user_text(kind: str, text: str) -> str:
    """The user message for a key press (``dtmf``) or a completed entry (``digits``)."""
    if kind == "digits":
        return f"[caller entered {text} on the keypad]" if text else "[caller entered no digits]"
    return f"[caller pressed {text}]"


def caller_input_text(kind: str, text: str, keys: str = "") -> str:
    """The user message for a turn's input: words, a key or an entry, or words with the keys
    pressed while they were said."""
    if kind in ("dtmf", "digits"):
        return dtmf_user_text(kind, text)
    return f"{dtmf_user_text('dtmf', keys)} {text}" if keys else text


class KeysWhileTalking:
    """Keys pressed while the caller is talking join that utterance's turn: one answer, not two.

    The replica that receives ``speech_started`` marks the call talking (``va:talk:<call>`` =
    utterance id); a key pressed meanwhile is held in ``va:heldk:<call>`` instead of starting a
    turn. The replica that answers the utterance's final takes the held keys into its turn
    (:meth:`take`, atomic), then clears the mark. The replica holding a key waits for the mark to
    go (an empty or backchannel final, or :data:`TALK_TTL_S` without one) and then takes the keys
    itself: whatever nobody took is answered as a key press of its own.
    """

    TALK_TTL_S = 15.0  # an utterance whose final never comes stops holding keys after this
    POLL_S = 0.1

    def __init__(self, *, store: Store) -> None:
        self._store = store

    async def talking(self, call_sid: str, utterance_id: int) -> None:
        """The caller started utterance ``utterance_id``: hold keys from now."""
        await self._store.put(call_key("talk", call_sid), str(utterance_id), ttl_s=self.TALK_TTL_S)

    async def done_talking(self, call_sid: str, utterance_id: int) -> None:
        """Utterance ``utterance_id`` is final (its turn took the keys, if it has one)."""
        await self._store.delete_if_equal(call_key("talk", call_sid), str(utterance_id))

    async def forget(self, call_sid: str) -> None:
        """The call ended: keys still held are answered by nobody."""
        await self._store.delete(call_key("talk", call_sid), call_key("heldk", call_sid))

    async def hold(self, call_sid: str, digit: str) -> bool:
        """Hold ``digit`` if the caller is talking (True), else leave it to the caller (False)."""
        if await self._store.get(call_key("talk", call_sid)) is None:
            return False
        await self._store.rpush(
            call_key("heldk", call_sid), [digit], ttl_s=_TTL_S, max_len=MAX_DIGITS
        )
        return True

    async def take(self, call_sid: str) -> str:
        """The keys held for the call, now no longer held."""
        return "".join(await self._store.take_list(call_key("heldk", call_sid)))

    async def wait_then_take(self, call_sid: str) -> str:
        """After the caller stopped talking: the held keys nobody took (empty if taken)."""
        deadline = time.monotonic() + self.TALK_TTL_S
        while time.monotonic() < deadline:
            if await self._store.get(call_key("talk", call_sid)) is None:
                break
            await asyncio.sleep(self.POLL_S)
        return await self.take(call_sid)


class DigitCollector:
    """Keypad entries of every call, in the agent store."""

    def __init__(self, *, store: Store) -> None:
        self._store = store

    @staticmethod
    def _keys(call_sid: str) -> tuple[str, str]:
        return call_key("dgt", call_sid), call_key("dgtk", call_sid)

    async def start(self, call_sid: str, request: DigitRequest) -> None:
        """Collect the next keys of ``call_sid`` into one entry (replaces an unfinished one)."""
        req_key, keys_key = self._keys(call_sid)
        stamped = DigitRequest(
            num_digits=request.num_digits,
            finish_on_key=request.finish_on_key,
            timeout_s=request.timeout_s,
            started=time.time(),
        )
        await self._store.delete(keys_key)
        await self._store.hset(req_key, "req", stamped.to_json(), ttl_s=_TTL_S)
        log.info("keypad entry started", **kv(call=call_sid, digits=request.num_digits))

    async def request(self, call_sid: str) -> DigitRequest | None:
        """The entry in progress, if any (expired requests are dropped)."""
        req_key, keys_key = self._keys(call_sid)
        raw = (await self._store.hgetall(req_key)).get("req")
        if raw is None:
            return None
        try:
            req = DigitRequest.from_json(raw)
        except (ValueError, KeyError, TypeError):
            await self.cancel(call_sid)
            return None
        if time.time() - req.started > FIRST_KEY_S and not await self._store.lrange(keys_key):
            await self.cancel(call_sid)
            return None
        return req

    async def on_digit(self, call_sid: str, digit: str) -> DigitProgress | None:
        """Take a key into the call's entry; ``None`` when no entry is in progress."""
        req = await self.request(call_sid)
        if req is None:
            return None
        _, keys_key = self._keys(call_sid)
        if digit == req.finish_on_key:
            entry = "".join(await self._store.lrange(keys_key))
            return await self._complete(call_sid, entry)
        await self._store.rpush(keys_key, [digit], ttl_s=_TTL_S, max_len=MAX_DIGITS)
        keys = await self._store.lrange(keys_key)
        if len(keys) >= req.num_digits:
            return await self._complete(call_sid, "".join(keys[: req.num_digits]))
        return DigitProgress(done=False, entry="", count=len(keys), waiting_s=req.timeout_s)

    async def expire(self, call_sid: str, count: int) -> DigitProgress | None:
        """The inter-key timeout passed after key ``count``: complete the entry if no key came
        since (``None`` when another key, a completion or a cancel got there first)."""
        if await self.request(call_sid) is None:
            return None
        _, keys_key = self._keys(call_sid)
        keys = await self._store.lrange(keys_key)
        if len(keys) != count:
            return None
        return await self._complete(call_sid, "".join(keys))

    async def cancel(self, call_sid: str) -> None:
        """Forget the call's entry (the caller spoke instead, or the call ended)."""
        await self._store.delete(*self._keys(call_sid))

    async def _complete(self, call_sid: str, entry: str) -> DigitProgress:
        await self.cancel(call_sid)
        log.info("keypad entry complete", **kv(call=call_sid, digits=len(entry)))
        return DigitProgress(done=True, entry=entry, count=len(entry), waiting_s=0.0)
