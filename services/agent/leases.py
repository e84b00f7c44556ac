"""Turn leases: exactly one agent replica answers each caller utterance (docs/failover.md).

A replica answers an utterance only after taking its lease, ``va:lease:<call>:<utterance>``,
with ``SET NX`` and a short TTL. It renews the lease while the turn runs and, when the turn is
over, replaces it with a long-lived ``done`` mark. The gateway re-sends a final transcript
whose reply has not started (``voice.<call>.retry.turn``); a replica receiving it takes the
lease only once the holder has stopped renewing it, i.e. died. So a turn lost with its
replica is answered by another one within about ``LEASE_S``, and never twice. The holder
also publishes a :class:`~shared.messages.TurnHeartbeat` at every renewal, so the gateway does
not re-send a turn that is alive, even while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

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
