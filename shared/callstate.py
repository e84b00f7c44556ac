"""Where per-call state lives in Redis, and how to connect to Redis (TLS, AUTH).

The agent writes conversation history under these keys (``services/agent/history.py``); the
gateway's transcript export reads them. Keeping the layout here lets both agree without the
gateway importing the agent.
"""

from __future__ import annotations

from typing import Any

from shared.settings import Settings

KEY_PREFIX = "va:"
HISTORY = "hist"  # list of JSON chat entries (private ``_``-prefixed fields)
HEARD = "heard"  # hash turn -> JSON {"seq", "text"}: where barge-in cut that turn's reply
VERIFIED = "verified"  # JSON {"member_id", "verification"}: the member verified on this call
VERIFY_ATTEMPTS = "verify"  # counter: verification attempts made on this call
PHI_LOOKUPS = "phi"  # counter: PHI tool calls made on this call


def call_key(kind: str, call_sid: str) -> str:
    """The Redis key of one kind of per-call state: ``va:<kind>:<call>``."""
    return f"{KEY_PREFIX}{kind}:{call_sid}"


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url(settings.redis_url, **opts)``.

    ``rediss://`` URLs get TLS from redis-py itself; this adds the CA bundle
    (``REDIS_TLS_CA_FILE``, certificates always verified) and AUTH from ``REDIS_PASSWORD``
    when the URL carries none.
    """
    opts: dict[str, Any] = {}
    if settings.redis_url.startswith("rediss://"):
        opts["ssl_cert_reqs"] = "required"
        if settings.redis_tls_ca_file:
            opts["ssl_ca_certs"] = settings.redis_tls_ca_file
    password = settings.redis_password.get_secret_value()
    if password:
        opts["password"] = password
    return opts
