"""NATS connections: one place for reconnect, auth/TLS and drain behaviour.

Typed text/control handlers use a FastStream :class:`~faststream.nats.NatsBroker`
(:func:`make_broker`); the audio hot path uses plain nats-py callbacks on the same connection
(``broker.connection``), which is an order of magnitude faster per message.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import nats
from faststream.nats import NatsBroker
from faststream.nats.security import (
    NatsCredentials,
    NatsNKey,
    NatsSecurity,
    NatsToken,
    NatsUserPassword,
)
from faststream.security import BaseSecurity
from nats.aio.client import Client as NATS
from nats.errors import SlowConsumerError

from shared import subjects
from shared.settings import Settings

log = logging.getLogger(__name__)


def _tls(settings: Settings) -> ssl.SSLContext | None:
    tls_url = any(u.startswith("tls://") for u in settings.nats_servers)
    if not (settings.nats_tls_ca_file or tls_url):
        return None
    ctx = ssl.create_default_context(cafile=settings.nats_tls_ca_file or None)
    if settings.nats_tls_cert_file:
        ctx.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file or None)
    return ctx


SlowConsumerHook = Callable[[str], None]
_slow_consumer_hooks: list[SlowConsumerHook] = []
_slow_logged: dict[str, float] = {}
SLOW_LOG_EVERY_S = 10.0


def on_slow_consumer(hook: SlowConsumerHook) -> None:
    """Call ``hook(subject)`` whenever nats-py drops a message for a full subscription.

    Subscriptions on the audio path set small pending limits (a few seconds of audio), so a
    consumer that falls behind loses its oldest frames instead of growing without bound; the
    hook lets the service report it (e.g. an Event on the call).
    """
    _slow_consumer_hooks.append(hook)


def _slow_consumer(subject: str) -> None:
    from shared.metrics import SLOW_CONSUMER_DROPS

    SLOW_CONSUMER_DROPS.labels(subjects.kind_of(subject)).inc()  # by kind, never by call
    now = time.monotonic()
    if now - _slow_logged.get(subject, -SLOW_LOG_EVERY_S) >= SLOW_LOG_EVERY_S:
        if len(_slow_logged) > 10_000:
            _slow_logged.clear()
        _slow_logged[subject] = now
        log.warning("slow consumer: messages dropped on a full subscription")
        for hook in _slow_consumer_hooks:
            try:
                hook(subject)
            except Exception:
                log.exception("slow consumer hook failed")


async def _on_error(e: Exception) -> None:
    if isinstance(e, SlowConsumerError):
        _slow_consumer(e.subject)  # one per dropped message: counted, logged sparingly
        return
    log.warning("nats error: %s", type(e).__name__)


async def _on_disconnect() -> None:
    log.info("nats disconnected (reconnects unless closing)")


async def _on_reconnect() -> None:
    from shared.metrics import BUS_RECONNECTS

    BUS_RECONNECTS.inc()
    log.info("nats reconnected")


def _credential_kinds(settings: Settings) -> list[str]:
    kinds = []
    if settings.nats_user:
        kinds.append("NATS_USER")
    if settings.nats_token.get_secret_value():
        kinds.append("NATS_TOKEN")
    if settings.nats_creds_file:
        kinds.append("NATS_CREDS_FILE")
    if settings.nats_nkey_seed_file:
        kinds.append("NATS_NKEY_SEED_FILE")
    return kinds


def connect_options(settings: Settings, *, name: str) -> dict[str, Any]:
    """Keyword arguments shared by nats-py and FastStream connections.

    Raises :class:`ValueError` (one line) when ``NATS_URL`` cannot be used or more than one
    kind of credential is set (the server would see only one of them).
    """
    kinds = _credential_kinds(settings)
    if len(kinds) > 1:
        raise ValueError(
            f"NATS credentials: set one of {', '.join(kinds)}, not several "
            "(user/password, token, creds file or NKey seed file)"
        )
    for path, var in (
        (settings.nats_creds_file, "NATS_CREDS_FILE"),
        (settings.nats_nkey_seed_file, "NATS_NKEY_SEED_FILE"),
    ):
        if path and not os.path.isfile(path):
            raise ValueError(f"{var}: {path} is not a readable file")
    opts: dict[str, Any] = {
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # a call outlives a NATS restart: never give up
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
        "error_cb": _on_error,
        "disconnected_cb": _on_disconnect,
        "reconnected_cb": _on_reconnect,
        "drain_timeout": 10,
    }
    if settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token.get_secret_value():
        opts["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds_file:
        opts["user_credentials"] = settings.nats_creds_file
    if settings.nats_nkey_seed_file:
        opts["nkeys_seed"] = settings.nats_nkey_seed_file
    if settings.nats_inbox_prefix and settings.nats_inbox_prefix != "_INBOX":
        # Per-service reply inboxes: NATS permissions then keep each to its own replies.
        opts["inbox_prefix"] = settings.nats_inbox_prefix
    tls = _tls(settings)
    if tls is not None:
        opts["tls"] = tls
    return opts


async def connect(settings: Settings, *, name: str) -> NATS:
    """A nats-py client with transparent reconnect (for hot paths and tools)."""
    opts = connect_options(settings, name=name)
    nc: NATS = await nats.connect(settings.nats_servers, **opts)
    return nc


def make_broker(settings: Settings, *, name: str) -> NatsBroker:
    """A FastStream broker with our reconnect/auth/TLS settings and quiet access logs.

    Every credential kind nats-py knows (user/password, token, creds file, NKey seed file)
    reaches the connection, through FastStream's security objects.
    """
    opts = connect_options(settings, name=name)
    tls = opts.pop("tls", None)
    for key in ("user", "password", "token", "user_credentials", "nkeys_seed"):
        opts.pop(key, None)
    security: BaseSecurity | None = None
    tls_kw: dict[str, Any] = {"ssl_context": tls}
    if settings.nats_user:
        security = NatsUserPassword(
            settings.nats_user, settings.nats_password.get_secret_value(), **tls_kw
        )
    elif settings.nats_token.get_secret_value():
        security = NatsToken(settings.nats_token.get_secret_value(), **tls_kw)
    elif settings.nats_creds_file:
        security = NatsCredentials(settings.nats_creds_file, **tls_kw)
    elif settings.nats_nkey_seed_file:
        security = NatsNKey(settings.nats_nkey_seed_file, **tls_kw)
    elif tls is not None:
        security = NatsSecurity(ssl_context=tls)
    return NatsBroker(
        settings.nats_servers,
        security=security,
        log_level=logging.DEBUG,  # per-message access logs halve throughput; keep them at debug
        **opts,
    )


def audio_client(broker: NatsBroker) -> NATS:
    """The broker's underlying nats-py client, for raw audio subscriptions."""
    conn = broker.connection
    if conn is None:
        raise RuntimeError("broker is not connected")
    return conn
