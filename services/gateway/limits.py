"""Input limits that need state: per-client rate limits and which proxies to believe.

``X-Forwarded-For``/``-Proto``/``-Host`` are believed only when the TCP peer is one of
``TRUSTED_PROXIES``; from anyone else they are ignored (a caller could otherwise pick its own
rate-limit bucket, or the URL its signature is checked against).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import MultiDict
from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_FORM_BYTES = 64 * 1024  # a Twilio webhook's form is a few KiB


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> MultiDict | None:
    """A webhook's form body, or None as soon as it exceeds ``limit`` (never buffers more)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    return MultiDict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def parse_networks(raw: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks (invalid entries raise ``ValueError``)."""
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in raw.split(",") if p.strip())


def is_trusted(addr: str | None, trusted: tuple[Network, ...]) -> bool:
    """Whether ``addr`` is one of the trusted proxies."""
    if not addr or not trusted:
        return False
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer, or, behind trusted proxies, the last untrusted hop."""
    peer = peer or "unknown"
    if not forwarded_for or not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop[:64]
    return hops[0][:64] if hops else peer


def forwarded_base(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[Network, ...]
) -> tuple[str, str] | None:
    """``(scheme, host)`` a trusted proxy says the client used, or None."""
    if not is_trusted(peer, trusted):
        return None
    proto = (headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower()
    host = (headers.get("x-forwarded-host") or "").split(",")[0].strip()
    if proto not in ("http", "https", "ws", "wss") or not host or len(host) > 255:
        return None
    if any(c in host for c in "/?#@ \\"):
        return None
    return proto, host


def candidate_urls(
    public_url: str, path: str, forwarded: tuple[str, str] | None, *, ws: bool
) -> list[str]:
    """URLs Twilio may have signed: the one from PUBLIC_URL first, then a trusted proxy's."""
    parts = urlsplit(public_url)
    base = parts.path.rstrip("/")
    scheme = parts.scheme
    if ws:
        scheme = "ws" if scheme == "http" else "wss"
    urls = [f"{scheme}://{parts.netloc}{base}{path}"]
    if forwarded is not None:
        proto, host = forwarded
        if ws:
            proto = "ws" if proto in ("http", "ws") else "wss"
        else:
            proto = "http" if proto in ("http", "ws") else "https"
        alt = f"{proto}://{host}{base}{path}"
        if alt not in urls:
            urls.append(alt)
    return urls


class TokenBucket:
    """One token bucket: ``rate_per_s`` refill, ``burst`` capacity (``rate_per_s <= 0``: no
    limit). A media stream holds one per kind of message it limits."""

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(
        self, *, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(max(1.0, burst))
        self._clock = clock
        self._tokens = self._burst
        self._last = clock()

    def allow(self) -> bool:
        """Take one token; False when the bucket is empty (or True when there is no limit)."""
        if self._rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class RateLimiter:
    """Token bucket per key (client IP): ``rate_per_s`` refill, ``burst`` capacity.

    Holds at most ``max_keys`` buckets (least recently used evicted), so a spray of source
    addresses costs bounded memory; an evicted client simply starts with a full bucket.
    """

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(max(1, burst))
        self._max = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def allow(self, key: str) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        if not self.enabled:
            return True
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return ok
