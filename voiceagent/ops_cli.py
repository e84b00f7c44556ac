"""CLI glue for the operator commands: ``tail`` options, ``replay``, ``calls``, ``asyncapi``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

Out = Callable[[str], None]


def add_tail_options(p: argparse.ArgumentParser) -> None:
    """``--stage``, ``--color``/``--no-color`` (shared by ``tail`` and ``replay``)."""
    from voiceagent.tail import STAGES

    p.add_argument(
        "--stage",
        metavar="LIST",
        help=f"only these stages, comma-separated: {', '.join(STAGES)}",
    )
    p.add_argument(
        "--color",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="colour the lines (default: only on a terminal, and not with NO_COLOR)",
    )


def add_ops_parsers(sub: Any) -> None:
    """Add ``replay``, ``calls`` and ``asyncapi`` to the ``voiceagent`` subcommands."""
    replay = sub.add_parser("replay", help="show a finished call from the event store, like tail")
    replay.add_argument("call_sid", metavar="CALL_SID")
    replay.add_argument("--show-text", action="store_true", help="show text and SIDs (audited)")
    replay.add_argument("--nats-url", help="default: the running stack's, else NATS_URL")
    add_tail_options(replay)

    calls = sub.add_parser("calls", help="recent calls: duration, turns, latency")
    calls.add_argument("--since", type=float, default=24.0, metavar="HOURS", help="default 24")
    calls.add_argument("--limit", type=int, default=50, help="at most this many (newest first)")
    calls.add_argument("--show-sids", action="store_true", help="full call SIDs, not log tags")
    calls.add_argument("--nats-url", help="default: the running stack's, else NATS_URL")

    asyncapi = sub.add_parser("asyncapi", help="regenerate docs/asyncapi/*.yaml (the bus contract)")
    asyncapi.add_argument("--check", action="store_true", help="only check they are up to date")


def tail_options(args: argparse.Namespace, *, with_call: bool) -> Any:
    """:class:`~voiceagent.tail.TailOptions` from parsed arguments (ValueError: bad --stage)."""
    from voiceagent.tail import TailOptions, parse_stages, use_color

    return TailOptions(
        show_text=getattr(args, "show_text", False),
        audio=not getattr(args, "no_audio", False),
        stages=parse_stages(getattr(args, "stage", None)),
        color=use_color(getattr(args, "color", None)),
        with_call=with_call,
    )


def nats_url(args: argparse.Namespace) -> str:
    """``--nats-url``, else the running stack's, else ``NATS_URL``."""
    from shared.settings import Settings
    from voiceagent.stack import read_state

    return str(args.nats_url or read_state().get("nats_url") or Settings().nats_url)


async def _connect(url: str, out: Out) -> Any:
    from shared import bus
    from shared.settings import Settings
    from voiceagent.stack import nats_reachable

    try:
        up = nats_reachable(url, timeout=2)
    except ValueError as e:
        out(str(e))
        return None
    if not up:
        out(f"NATS is not reachable at {url}: is the stack up? (voiceagent up)")
        return None
    # NATS credentials/TLS come from the same settings as the services'.
    settings = Settings(nats_url=url)
    opts = bus.connect_options(settings, name="voiceagent-cli")
    opts["max_reconnect_attempts"] = 2
    import nats

    return await nats.connect(settings.nats_servers, **opts)


async def run_replay(args: argparse.Namespace, *, out: Out) -> int:
    """``voiceagent replay CALL_SID``."""
    from nats.js.errors import NotFoundError

    from shared import subjects
    from voiceagent.replay import replay
    from voiceagent.tail import audit_text_access

    try:
        subjects.call_root(args.call_sid)
        opts = tail_options(args, with_call=False)
    except ValueError as e:
        out(str(e))
        return 2
    nc = await _connect(nats_url(args), out)
    if nc is None:
        return 1
    try:
        if opts.show_text and not await audit_text_access(
            nc, action="call.replay", call_sid=args.call_sid, out=out
        ):
            return 1
        try:
            n = await replay(nc, args.call_sid, opts, out=out)
        except NotFoundError:
            out("no event store (stream VOICE_EVENTS): the gateway creates it when JetStream is on")
            return 1
        if n == 0:
            out("nothing stored for that call (unknown SID, or older than EVENTS_RETENTION_H)")
            return 1
        return 0
    finally:
        await nc.drain()


async def run_calls(args: argparse.Namespace, *, out: Out) -> int:
    """``voiceagent calls``."""
    from nats.js.errors import NotFoundError

    from shared.callevents import recent_calls
    from voiceagent.calls import format_table

    nc = await _connect(nats_url(args), out)
    if nc is None:
        return 1
    try:
        try:
            found = await recent_calls(
                nc, since=time.time() - args.since * 3600, limit=max(1, args.limit)
            )
        except NotFoundError:
            out("no event store (stream VOICE_EVENTS): the gateway creates it when JetStream is on")
            return 1
    finally:
        await nc.drain()
    if not found:
        out(f"no calls in the last {args.since:g} h")
        return 0
    for line in format_table(found, show_sids=args.show_sids):
        out(line)
    return 0


def run_asyncapi(args: argparse.Namespace, *, out: Out) -> int:
    """``voiceagent asyncapi [--check]``."""
    from shared import asyncapi

    if args.check:
        stale = [
            str(p)
            for p, text in asyncapi.generate().items()
            if not p.exists() or p.read_text(encoding="utf-8") != text
        ]
        for p in stale:
            out(f"out of date: {p} (run: voiceagent asyncapi)")
        return 1 if stale else 0
    changed = asyncapi.write()
    out(f"{len(changed)} file(s) updated in {asyncapi.DOCS_DIR}" if changed else "up to date")
    return 0
