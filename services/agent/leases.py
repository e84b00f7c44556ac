"""Turn leases: exactly one agent replica answers each caller utterance (docs/failover.md).

A replica answers an utterance only after taking its lease, ``va:lease:<call>:<utterance>``,
with ``SET NX`` and a short TTL. It renews the lease while the turn runs and, when the turn is
over, replaces it with a long-lived ``done`` mark. The gateway re-sends a final transcript
whose reply has not started (``voice.<call>.retry.turn``); a replica receiving it takes the
lease only once the holder has stopped renewing it, i.e. died. So a turn lost with its
replica is answered by another one within about ``LEASE_S``, and never twice. The holder
also publishes a :class:`~shared.messages.TurnHeartbeat` at every renewal, so the gateway does
not re-send a turn that is alive, even while Redis is down.

The holder also records its progress, ``va:said:<call>:<utterance>`` (:class:`TurnProgress`:
the turn id and the sentences already published). A replica taking over a dead holder's
utterance continues that turn: same turn id, the next segment number, the sentences the caller
already heard not spoken again, the user's words not added to the history twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.agent.store import Store, call_key
from shared.logging import kv

log = logging.getLogger(__name__)

LEASE_S = 2.0  # a dead holder's lease lapses this long after its last renewal
RENEW_S = 0.5
DONE_TTL_S = 600.0  # a finished turn is never answered again (late retries, re-deliveries)
DONE = "done"


def lease_key(call_sid: str, utterance_id: int) -> str:
    """``va:lease:<call>:<utterance>``."""
    return f"{call_key('lease', call_sid)}:{utterance_id}"


def progress_key(call_sid: str, utterance_id: int) -> str:
    """``va:said:<call>:<utterance>``."""
    return f"{call_key('said', call_sid)}:{utterance_id}"


@dataclass
class TurnProgress:
    """How far the holder of an utterance got: its turn id and the sentences it published."""

    turn: int
    said: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"turn": self.turn, "said": self.said})

    @classmethod
    def from_json(cls, raw: str) -> TurnProgress | None:
        """None for anything unreadable (then the utterance is answered afresh)."""
        try:
            data = json.loads(raw)
            said = [str(t) for t in data.get("said", [])]
            return cls(turn=int(data["turn"]), said=said)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class TurnLeases:
    """Takes, renews and closes the leases of one replica (``owner``)."""

    def __init__(
        self, *, store: Store, owner: str, lease_s: float = LEASE_S, renew_s: float = RENEW_S
    ) -> None:
        self._store = store
        self.owner = owner
        self._lease_s = lease_s
        self._renew_s = renew_s

    async def acquire(self, call_sid: str, utterance_id: int | None) -> bool:
        """True if this replica should answer the utterance (None: not leased, always True)."""
        if utterance_id is None:
            return True
        key = lease_key(call_sid, utterance_id)
        took = await self._store.set_if_absent(key, self.owner, ttl_s=self._lease_s)
        if not took:
            log.info("utterance already answered elsewhere", **kv(call=call_sid, utt=utterance_id))
        return took

    async def progress(self, call_sid: str, utterance_id: int | None) -> TurnProgress | None:
        """What an earlier holder of the utterance published before it died (None: nothing)."""
        if utterance_id is None:
            return None
        raw = await self._store.get(progress_key(call_sid, utterance_id))
        return TurnProgress.from_json(raw) if raw else None

    async def record(self, call_sid: str, utterance_id: int | None, progress: TurnProgress) -> None:
        """Remember how far this holder got (best effort: Redis may be down)."""
        if utterance_id is None:
            return
        with contextlib.suppress(Exception):
            await self._store.put(
                progress_key(call_sid, utterance_id), progress.to_json(), ttl_s=DONE_TTL_S
            )

    async def hold(
        self,
        call_sid: str,
        utterance_id: int | None,
        turn: asyncio.Task[None],
        *,
        beat: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Renew the lease until ``turn`` ends, then mark the utterance done.

        ``beat`` (the bus heartbeat the gateway watches) runs at once and at every renewal.
        """
        if utterance_id is None:
            return
        key = lease_key(call_sid, utterance_id)
        try:
            while not turn.done():
                if beat is not None:
                    with contextlib.suppress(Exception):  # reconnecting: the next one goes out
                        await beat()
                await asyncio.wait({turn}, timeout=self._renew_s)
                if turn.done():
                    break
                if not await self._store.renew_if_equal(key, self.owner, ttl_s=self._lease_s):
                    # Lapsed (this process stalled for LEASE_S): another replica may answer too.
                    log.warning("turn lease lost", **kv(call=call_sid, utt=utterance_id))
                    return
        finally:
            with contextlib.suppress(Exception):
                await self._store.put(key, DONE, ttl_s=DONE_TTL_S)
