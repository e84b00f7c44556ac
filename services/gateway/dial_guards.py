"""Guard rails every outbound dial passes before Twilio is asked to place it.

In order: the number is E.164 and possible (``phonenumbers``); it starts with one of
``OUTBOUND_ALLOWED_PREFIXES`` (toll fraud: premium and foreign ranges are never reachable
unless listed); it is not on the do-not-call list (``OUTBOUND_DNC_FILE`` and the Redis set
``va:dnc``); it is inside ``OUTBOUND_HOURS`` in *every* time zone the number may be in (a
number whose zone is unknown is refused while hours are set); and the per-minute dial budget
(``OUTBOUND_MAX_PER_MIN``) is not spent. A refusal names its reason; nothing is dialed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

from services.gateway.limits import RateLimiter
from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)

DNC_KEY = "va:dnc"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class DialRefused(Exception):
    """The dial is not allowed; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


def parse_hours(raw: str) -> tuple[dtime, dtime] | None:
    """``"09:00-20:00"`` -> (09:00, 20:00); empty -> None (any time); else ValueError."""
    if not raw.strip():
        return None
    m = _HOURS.fullmatch(raw)
    if not m:
        raise ValueError("OUTBOUND_HOURS: expected HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    return dtime(h1, m1), dtime(h2, m2)


def parse_prefixes(raw: str) -> tuple[str, ...]:
    """``"+1555, +44"`` -> ("+1555", "+44"); every entry must be ``+`` and digits."""
    out = tuple(p.strip() for p in raw.split(",") if p.strip())
    for p in out:
        if not re.fullmatch(r"\+\d{1,15}", p):
            raise ValueError("OUTBOUND_ALLOWED_PREFIXES: entries are + and digits")
    return out


def time_zones(number: str) -> tuple[str, ...]:
    """The IANA zones ``number`` may be in (empty when unknown)."""
    zones = pn_timezone.time_zones_for_number(phonenumbers.parse(number))
    return tuple(z for z in zones if z != pn_timezone.UNKNOWN_TIMEZONE)


def within_hours(hours: tuple[dtime, dtime], zones: tuple[str, ...], now: datetime) -> bool:
    """True when ``now`` is inside ``hours`` in every one of ``zones``."""
    start, end = hours
    for zone in zones:
        local = now.astimezone(ZoneInfo(zone)).time()
        inside = start <= local < end if start <= end else (local >= start or local < end)
        if not inside:
            return False
    return True


def load_dnc(path: Path | None) -> frozenset[str]:
    """Numbers in the do-not-call file (one a line, ``#`` comments); empty without a file."""
    if path is None:
        return frozenset()
    numbers = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip().replace(" ", "").replace("-", "")
        if entry:
            numbers.add(entry)
    return frozenset(numbers)


@dataclass(frozen=True, slots=True)
class Destination:
    """A destination that passed the number checks (E.164 and the zones it may be in)."""

    number: str
    zones: tuple[str, ...]


class DialGuards:
    """The checks of one gateway process (rate budget included)."""

    def __init__(
        self,
        *,
        prefixes: tuple[str, ...],
        hours: tuple[dtime, dtime] | None,
        dnc_file: Path | None,
        max_per_min: int,
        redis: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefixes = prefixes
        self._hours = hours
        self._dnc_file = dnc_file
        self._redis = redis
        self._clock = clock
        self._limiter = RateLimiter(
            rate_per_s=max_per_min / 60.0, burst=max(1, max_per_min), clock=time.monotonic
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, redis: Any = None) -> DialGuards:
        return cls(
            prefixes=parse_prefixes(settings.outbound_allowed_prefixes),
            hours=parse_hours(settings.outbound_hours),
            dnc_file=settings.outbound_dnc_file,
            max_per_min=settings.outbound_max_per_min,
            redis=redis,
        )

    def destination(self, number: str) -> Destination:
        """Number checks that need no I/O: E.164, possible, allow-listed, calling hours."""
        number = number.strip()
        if not _E164.fullmatch(number):
            raise DialRefused("invalid_number", "destination must be E.164", status=422)
        try:
            parsed = phonenumbers.parse(number)
        except phonenumbers.NumberParseException:
            raise DialRefused(
                "invalid_number", "destination is not a phone number", status=422
            ) from None
        if not phonenumbers.is_possible_number(parsed):
            raise DialRefused("invalid_number", "destination is not a possible number", status=422)
        if not any(number.startswith(p) for p in self._prefixes):
            raise DialRefused("not_allowed", "destination is not in OUTBOUND_ALLOWED_PREFIXES")
        zones = time_zones(number)
        if self._hours is not None:
            if not zones:
                raise DialRefused("unknown_time_zone", "destination's time zone is unknown")
            now = datetime.fromtimestamp(self._clock(), tz=UTC)
            try:
                ok = within_hours(self._hours, zones, now)
            except ZoneInfoNotFoundError:
                raise DialRefused(
                    "unknown_time_zone", "no time zone data for the destination"
                ) from None
            if not ok:
                raise DialRefused("outside_hours", "outside calling hours at the destination")
        return Destination(number=number, zones=zones)

    async def on_dnc_list(self, number: str) -> bool:
        """The number is on the do-not-call file or the Redis set (file re-read each dial)."""
        dnc = await asyncio.to_thread(load_dnc, self._dnc_file)
        if number in dnc:
            return True
        if self._redis is None:
            return False
        try:
            return bool(await asyncio.wait_for(self._redis.sismember(DNC_KEY, number), 1.0))
        except Exception as e:
            # Fail closed: without the list we cannot know the number may be called.
            log.warning("do-not-call set unavailable", **kv(error=type(e).__name__))
            raise DialRefused(
                "dnc_unavailable", "do-not-call list unavailable", status=503
            ) from None

    async def check(self, number: str) -> Destination:
        """Every check, in order; raises :class:`DialRefused`."""
        dest = self.destination(number)
        if await self.on_dnc_list(dest.number):
            raise DialRefused("do_not_call", "destination is on the do-not-call list")
        if not self._limiter.allow("outbound"):
            raise DialRefused("rate_limited", "outbound dial limit reached", status=429)
        return dest
