"""``voiceagent audit`` (read the audit trail) and ``voiceagent purge-recordings``."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Out = Callable[[str], None]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, *, now: float | None = None) -> float:
    """``30m``, ``12h``, ``7d`` (ago) or an ISO 8601 time -> epoch seconds."""
    m = _DURATION.fullmatch(value.strip())
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected e.g. 24h, 7d or 2026-01-31T12:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def add_security_parsers(sub: Any) -> None:
    """Register ``audit`` and ``purge-recordings`` on the CLI's subparsers."""
    audit = sub.add_parser(
        "audit", help="who read or exported transcripts and recordings (audit trail)"
    )
    audit.add_argument("--since", type=parse_since, help="e.g. 24h, 7d or an ISO time")
    audit.add_argument("--call", dest="call_sid", metavar="CALL_SID", help="one call only")
    audit.add_argument("--actor", help="one actor only")
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--json", action="store_true", help="one JSON record per line")
    audit.add_argument("--nats-url", help="default: NATS_URL")
    sub.add_parser("purge-recordings", help="delete recordings older than RECORDING_RETENTION_DAYS")


def format_record(rec: Any) -> str:
    when = datetime.fromtimestamp(rec.at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{when}  {rec.actor:<16} {rec.action:<20} {rec.outcome:<9} "
        f"{rec.call_sid or '-':<36} {rec.client or '-'}"
    )


async def run_audit(args: argparse.Namespace, *, out: Out) -> int:
    """Print matching audit records, oldest first."""
    from shared import bus
    from shared.audit import query
    from shared.settings import get_settings

    settings = get_settings()
    if args.nats_url:
        settings = settings.model_copy(update={"nats_url": args.nats_url})
    nc = await bus.connect(settings, name="voiceagent-audit")
    try:
        try:
            records = await query(
                nc,
                since=args.since,
                call_sid=args.call_sid,
                actor=args.actor,
                limit=args.limit,
            )
        except Exception as e:
            out(f"audit trail unavailable: {type(e).__name__}")
            return 1
    finally:
        await nc.drain()
    for rec in records:
        out(json.dumps(rec.model_dump()) if args.json else format_record(rec))
    return 0


def run_purge(out: Out) -> int:
    """Delete expired recordings (run it daily, e.g. from cron or a Kubernetes CronJob)."""
    from services.gateway.recording import recording_store
    from shared.settings import get_settings

    store = recording_store(get_settings())
    if store is None:
        out("recordings are off (RECORD_CALLS=false): nothing to purge")
        return 0
    out(f"deleted {store.purge()} recording(s)")
    return 0
