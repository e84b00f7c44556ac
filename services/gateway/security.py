"""Twilio request signatures and the per-call stream token.

Both ``/voice`` and the WebSocket upgrade are signed by Twilio (``X-Twilio-Signature``) over the
*public* URL, which is rebuilt from ``PUBLIC_URL``, never from the local socket (behind a proxy
the two differ). The stream token is a second, call-bound check on the ``start`` message: an
HMAC over the call SID and an expiry, so any gateway replica can verify a token another replica
issued; single use is enforced per process and, with Redis, across replicas. A CallSid is
admitted once (:class:`CallAdmissions`), so exactly one token is ever minted per call: the
upgrade's signature is the same for every call (Twilio signs the fixed ``wss://`` URL), and
the single-use, call-bound token is what ties a stream to the call ``/voice`` admitted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from twilio.request_validator import RequestValidator, get_signature_algorithm

from shared import callstate
from shared.logging import kv

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-twilio-signature"
SIGNATURE_SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"


def signature_valid(
    *,
    auth_token: str,
    url: str,
    params: Mapping[str, Any],
    signature: str | None,
    settings_header: str | None = None,
) -> bool:
    """Whether ``signature`` is Twilio's for ``url`` and ``params`` (False when missing)."""
    if not signature or not auth_token:
        return False
    algorithm = get_signature_algorithm(settings_header)
    return bool(RequestValidator(auth_token).validate(url, params, signature, algorithm))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CallTokens:
    """Short-lived, single-use tokens bound to a call SID (``<expiry>.<nonce>.<mac>``)."""

    def __init__(
        self, *, secret: bytes, ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = hashlib.sha256(b"voiceagent call token\0" + secret).digest()
        self._ttl = ttl_s
        self._clock = clock
        self._used: dict[str, float] = {}  # nonce -> expiry (replays refused until then)
        self._issued: dict[str, float] = {}  # nonce -> expiry (admitted, stream not started)

    @classmethod
    def from_auth_token(cls, auth_token: str, *, ttl_s: float) -> CallTokens:
        """Keyed by the Twilio auth token (every replica agrees); random if there is none."""
        secret = auth_token.encode() if auth_token else secrets.token_bytes(32)
        return cls(secret=secret, ttl_s=ttl_s)

    def _mac(self, call_sid: str, expiry: int, nonce: str) -> str:
        msg = f"{call_sid}.{expiry}.{nonce}".encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest()[:18])

    def issue(self, call_sid: str) -> str:
        """A new token for ``call_sid``."""
        self._prune()
        expiry = int(self._clock() + self._ttl) + 1
        nonce = _b64(secrets.token_bytes(12))
        self._issued[nonce] = expiry
        return f"{expiry}.{nonce}.{self._mac(call_sid, expiry, nonce)}"

    def redeem(self, token: str | None, call_sid: str) -> bool:
        """True once for a valid, unexpired token of ``call_sid``; False ever after."""
        if not token or len(token) > 128:
            return False
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        expiry, nonce, mac = int(parts[0]), parts[1], parts[2]
        if expiry < self._clock():
            return False
        if not hmac.compare_digest(mac, self._mac(call_sid, expiry, nonce)):
            return False
        self._prune()
        if nonce in self._used:
            return False
        self._used[nonce] = expiry
        self._issued.pop(nonce, None)
        return True

    @property
    def pending(self) -> int:
        """Calls admitted by ``/voice`` whose stream has not started (nor expired) yet."""
        self._prune()
        return len(self._issued)

    def _prune(self) -> None:
        now = self._clock()
        for table in (self._used, self._issued):
            if table and min(table.values()) < now:
                for nonce in [n for n, exp in table.items() if exp < now]:
                    del table[nonce]


def signature_valid_any(
    *,
    auth_token: str,
    urls: list[str],
    params: Mapping[str, Any],
    signature: str | None,
    settings_header: str | None = None,
) -> bool:
    """Whether ``signature`` is Twilio's for one of ``urls`` (PUBLIC_URL's first, then a
    trusted proxy's ``X-Forwarded-Proto``/``-Host`` view of the same path)."""
    return any(
        signature_valid(
            auth_token=auth_token,
            url=url,
            params=params,
            signature=signature,
            settings_header=settings_header,
        )
        for url in urls
    )


class SharedTokenLedger:
    """Single use across gateway replicas: the first ``SET NX`` of a token's nonce in Redis wins.

    Twilio may reach any replica, and each :class:`CallTokens` only remembers the tokens it
    redeemed itself. With Redis, a replayed token is refused by every replica. When Redis does
    not answer, the in-process check still holds (a Redis outage degrades, never kills a call).
    """

    def __init__(self, *, redis: Any, timeout_s: float = 0.3) -> None:
        self._redis = redis
        self._timeout = timeout_s

    @classmethod
    def from_settings(cls, settings: Any) -> SharedTokenLedger | None:
        if not settings.redis_url:
            return None
        from shared.callstate import redis_client

        client = redis_client(
            settings.redis_url, settings=settings, socket_timeout=0.3, socket_connect_timeout=0.3
        )
        return cls(redis=client)

    async def first_use(self, token: str) -> bool:
        """True unless another replica (or this one) already used ``token``."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        expiry, nonce = int(parts[0]), parts[1]
        key = f"va:tok:{nonce}"
        try:
            ok = await asyncio.wait_for(
                self._redis.set(key, b"1", nx=True, exat=max(expiry, int(time.time()) + 1)),
                self._timeout,
            )
        except Exception as e:  # Redis down or slow: the in-process check stands
            log.warning("token ledger unavailable", **kv(error=type(e).__name__))
            return True
        return bool(ok)

    async def aclose(self) -> None:
        await self._redis.aclose()


CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
"""Twilio's CallSid shape. Nothing else is admitted, logged as a call or used in a key."""

NO_LIMIT_LIFETIME_S = 24 * 3600.0  # Twilio's longest call, for MAX_CALL_S=0 (no limit)


def is_call_sid(value: str) -> bool:
    """Whether ``value`` is a Twilio CallSid (``CA`` + 32 hex digits)."""
    return bool(CALL_SID.fullmatch(value))


def admission_lifetime_s(settings: Any) -> float:
    """How long a CallSid stays admitted: the longest the call itself can last, plus grace."""
    if settings.max_call_s <= 0:
        return NO_LIMIT_LIFETIME_S
    return float(
        settings.max_call_s + settings.call_limit_grace_s + settings.call_token_ttl_s + 60.0
    )


class CallAdmissions:
    """Each CallSid is admitted (and so gets a stream token) once, on every gateway replica.

    The first ``SET NX va:admit:{<sid>}`` (lifetime :func:`admission_lifetime_s`) wins; a
    replayed ``/voice`` finds the key and gets the busy TwiML. This process also remembers
    what it admitted, which is the whole check without Redis (single-process dev) and what
    still holds on this replica while Redis is down: then a new SID is admitted (a Redis
    outage never turns real calls away) and a replay is caught only on the replica that
    admitted the original (docs/decisions/0038-voice-admitted-once.md).
    """

    def __init__(
        self,
        *,
        redis: Any | None,
        lifetime_s: float,
        timeout_s: float = 0.3,
        max_local: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._lifetime = lifetime_s
        self._timeout = timeout_s
        self._max = max_local
        self._clock = clock
        self._local: OrderedDict[str, float] = OrderedDict()  # sid -> expiry, oldest first

    @classmethod
    def from_settings(cls, settings: Any) -> CallAdmissions:
        redis = None
        if settings.redis_url:
            from shared.callstate import redis_client

            redis = redis_client(
                settings.redis_url,
                settings=settings,
                socket_timeout=0.3,
                socket_connect_timeout=0.3,
            )
        return cls(redis=redis, lifetime_s=admission_lifetime_s(settings))

    def claim_local(self, call_sid: str) -> bool:
        """True the first time this process sees ``call_sid`` (within its lifetime)."""
        now = self._clock()
        while self._local:
            sid, exp = next(iter(self._local.items()))
            if exp >= now and len(self._local) < self._max:
                break
            del self._local[sid]
        if call_sid in self._local:
            return False
        self._local[call_sid] = now + self._lifetime
        return True

    async def claim_shared(self, call_sid: str) -> bool:
        """True unless another replica (or this one) already admitted ``call_sid``.

        Redis down or slow: True (logged); the in-process check in :meth:`claim_local` stands.
        """
        if self._redis is None:
            return True
        try:
            ok = await asyncio.wait_for(
                self._redis.set(
                    callstate.call_key(callstate.ADMITTED, call_sid),
                    b"1",
                    nx=True,
                    ex=max(1, int(self._lifetime)),
                ),
                self._timeout,
            )
        except Exception as e:
            log.warning("admission ledger unavailable", **kv(error=type(e).__name__))
            return True
        return bool(ok)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
