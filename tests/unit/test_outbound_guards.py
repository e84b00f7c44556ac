"""The dial guard rails: which destinations an outbound call may go to, and when."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.gateway.dial_guards import DialGuards, DialRefused, parse_hours, parse_prefixes


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def guards(
    *, hours: str = "09:00-20:00", now: str = "2026-12-01T15:00:00", per_min: int = 10,
    dnc: Path | None = None, prefixes: str = "+1,+44",
) -> DialGuards:  # fmt: skip
    return DialGuards(
        prefixes=parse_prefixes(prefixes),
        hours=parse_hours(hours),
        dnc_file=dnc,
        max_per_min=per_min,
        clock=lambda: _at(now),
    )


def test_calling_hours_are_the_destinations_local_time() -> None:
    # 15:00 UTC is 10:00 in New York and 07:00 in Los Angeles (December: standard time).
    assert guards().destination("+12125551234").zones == ("America/New_York",)
    with pytest.raises(DialRefused) as e:
        guards().destination("+14155551234")
    assert e.value.reason == "outside_hours"
    # 20:30 UTC: 15:30 in New York, 20:30 in London (closed at 20:00).
    guards(now="2026-12-01T20:30:00").destination("+12125551234")
    with pytest.raises(DialRefused):
        guards(now="2026-12-01T20:30:00").destination("+442071234567")


def test_a_number_spanning_time_zones_must_be_inside_hours_in_all_of_them() -> None:
    # A US toll-free number may ring anywhere from Guam to Newfoundland: never all in hours.
    with pytest.raises(DialRefused) as e:
        guards(now="2026-12-01T18:00:00").destination("+18005551234")
    assert e.value.reason == "outside_hours"
    guards(hours="", now="2026-12-01T18:00:00").destination("+18005551234")


def test_unknown_time_zone_is_refused_while_hours_are_set() -> None:
    with pytest.raises(DialRefused) as e:
        guards().destination("+15555550123")  # 555: fictional, no zone
    assert e.value.reason == "unknown_time_zone"
    guards(hours="").destination("+15555550123")


def test_destinations_outside_the_allow_list_are_refused() -> None:
    with pytest.raises(DialRefused) as e:
        guards(prefixes="+1212").destination("+12135551234")
    assert e.value.reason == "not_allowed"
    with pytest.raises(DialRefused) as e:
        guards(prefixes="").destination("+12125551234")
    assert e.value.reason == "not_allowed"
    for bad in ("12125551234", "+1 212 555 1234", "+0123456789", "+1212555"):
        with pytest.raises(DialRefused) as e:
            guards().destination(bad)
        assert e.value.reason == "invalid_number" and e.value.status == 422


async def test_do_not_call_file_and_dial_budget(tmp_path: Path) -> None:
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("# opted out\n+1 212-555-0999  # by phone\n")
    g = guards(dnc=dnc, per_min=2)
    with pytest.raises(DialRefused) as e:
        await g.check("+12125550999")
    assert e.value.reason == "do_not_call"
    await g.check("+12125551234")
    await g.check("+12125551235")
    with pytest.raises(DialRefused) as e:
        await g.check("+12125551236")
    assert e.value.reason == "rate_limited" and e.value.status == 429


def test_bad_settings_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="OUTBOUND_HOURS"):
        parse_hours("9am-5pm")
    with pytest.raises(ValueError, match="OUTBOUND_ALLOWED_PREFIXES"):
        parse_prefixes("1212")
