"""``voiceagent dial +1212... --purpose reminder --param booking=...``: place an outbound call.

It asks the gateway (``POST /calls/outbound``, admin token) to place the call; the gateway
runs the guard rails and asks Twilio. It prints the CallSid, or the refusal and its reason.
Follow the call with ``voiceagent tail CALL_SID``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import httpx

from shared.outbound import OutboundRequest


def add_dial_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dial`` and its options."""
    p = sub.add_parser("dial", help="place an outbound call through the gateway (Twilio)")
    p.add_argument("to", metavar="NUMBER", help="destination, E.164 (+12125551234)")
    p.add_argument("--purpose", default="reminder", help="why we call (reminder, follow_up...)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter for the agent (repeatable), e.g. booking='on Tuesday at 10 am'",
    )
    p.add_argument("--no-amd", action="store_true", help="no answering-machine detection")
    p.add_argument("--gateway", metavar="URL", help="gateway base URL (default: the stack's)")
    p.add_argument("--admin-token", help="bearer token (default: ADMIN_TOKEN)")


def request_from_args(args: argparse.Namespace) -> OutboundRequest:
    """The request body; ValueError on a malformed ``--param``."""
    params: dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param wants NAME=VALUE, got {item!r}")
        params[name.strip()] = value.strip()
    return OutboundRequest(to=args.to, purpose=args.purpose, params=params, amd=not args.no_amd)


async def run_dial(args: argparse.Namespace, *, out: Callable[[str], None]) -> int:
    """Place the call; 0 when Twilio accepted it."""
    from pydantic import ValidationError

    from shared.settings import Settings
    from voiceagent.stack import read_state

    settings = Settings()
    try:
        body = request_from_args(args)
    except (ValueError, ValidationError) as e:
        out(f"dial refused: {e}")
        return 2
    gateway = args.gateway or read_state().get("gateway_url") or f"http://127.0.0.1:{settings.port}"
    token = args.admin_token
    if not token:  # the gateway's own setting, in the gateway's one form (services.gateway.auth)
        from services.gateway.auth import parse_tokens

        try:
            tokens = parse_tokens(settings.admin_token.get_secret_value())
        except ValueError as e:
            out(f"dial refused: {e}")
            return 2
        if len(tokens) != 1:
            out("dial refused: give --admin-token (ADMIN_TOKEN names none or several people)")
            return 2
        (token,) = tokens.values()
    try:
        async with httpx.AsyncClient(timeout=15.0) as client:
            resp = await client.post(
                gateway.rstrip("/") + "/calls/outbound",
                json=body.model_dump(),
                headers={"Authorization": f"Bearer {token}"},
            )
    except httpx.HTTPError as e:
        out(f"gateway unreachable at {gateway}: {type(e).__name__}")
        return 1
    try:
        data = resp.json()
    except json.JSONDecodeError:
        data = {"detail": resp.text[:200]}
    if resp.status_code == 201:
        out(f"calling: {data['call_sid']}  (purpose {data['purpose']}, amd {data['amd']})")
        out(f"follow it: voiceagent tail {data['call_sid']}")
        return 0
    reason = data.get("error") or data.get("detail") or resp.reason_phrase
    out(f"dial refused ({resp.status_code}): {reason}")
    return 1
