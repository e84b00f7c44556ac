"""Who may use the console: the admin bearer token, and single-use tokens for browser calls.

The console shows transcripts (PHI), so its feed and its call endpoint need ``ADMIN_TOKEN``;
with no token configured the console is off. A browser cannot sign a WebSocket upgrade the way
Twilio does, so a console call gets a second token, single use and bound to the call SID, that
the browser offers as a WebSocket subprotocol (headers are out of a page's reach; a query string
ends up in proxy logs). Only sockets that offer :data:`CONSOLE_PROTOCOL` are judged this way:
Twilio never offers it, so Twilio calls keep their signature check unchanged.
"""

from __future__ import annotations

import hashlib
import secrets
from weakref import WeakKeyDictionary

from starlette.requests import HTTPConnection

from services.gateway.auth import AdminAuth
from services.gateway.runtime import Gateway
from services.gateway.security import CallTokens
from shared.settings import Settings

CONSOLE_PROTOCOL = "voiceagent-console"
# The second subprotocol the browser offers: ``CONSOLE_TOKEN_PREFIX + <call sid> + "." + token``.
CONSOLE_TOKEN_PREFIX = "va-call."

_TOKENS: WeakKeyDictionary[Gateway, CallTokens] = WeakKeyDictionary()


def console_auth(settings: Settings) -> AdminAuth:
    """The admin tokens (``ADMIN_TOKEN``: one token, or ``name:token`` pairs).

    An ambiguous value raises ``ValueError``: the gateway refuses to start rather than run
    with the console silently off.
    """
    return AdminAuth.from_setting(settings.admin_token.get_secret_value())


def token_actor(auth: AdminAuth, token: str | None) -> str | None:
    """Who a bare admin token (as the page sends it on the feed socket) belongs to."""
    if not token:
        return None
    return auth.actor(f"Bearer {token}")


def console_tokens(gateway: Gateway) -> CallTokens:
    """This gateway's console call tokens (keyed apart from Twilio's stream tokens)."""
    tokens = _TOKENS.get(gateway)
    if tokens is None:
        admin = gateway.settings.admin_token.get_secret_value()
        # Derived from the admin token so every replica verifies; never equal to Twilio's key.
        secret = (
            hashlib.sha256(b"voiceagent console\0" + admin.encode()).digest()
            if admin
            else secrets.token_bytes(32)
        )
        tokens = CallTokens(secret=secret, ttl_s=gateway.settings.call_token_ttl_s)
        _TOKENS[gateway] = tokens
    return tokens


def offered_protocols(conn: HTTPConnection) -> list[str]:
    """The subprotocols a WebSocket upgrade offers."""
    raw = conn.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def is_console_socket(conn: HTTPConnection) -> bool:
    """The upgrade comes from the console's softphone (it offers our subprotocol)."""
    return CONSOLE_PROTOCOL in offered_protocols(conn)


def redeem_console_upgrade(conn: HTTPConnection, gateway: Gateway) -> str | None:
    """The call SID a console socket's token admits (once), or None."""
    for proto in offered_protocols(conn):
        if not proto.startswith(CONSOLE_TOKEN_PREFIX):
            continue
        call_sid, _, token = proto[len(CONSOLE_TOKEN_PREFIX) :].partition(".")
        if call_sid and console_tokens(gateway).redeem(token, call_sid):
            return call_sid
    return None
