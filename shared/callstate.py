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
ADMITTED = "admit"  # the gateway: this CallSid was admitted once (a replayed /voice is refused)
PHI_LOOKUPS = "phi"  # counter: PHI tool calls made on this call


def call_key(kind: str, call_sid: str) -> str:
    """The Redis key of one kind of per-call state: ``va:<kind>:{<call>}``.

    The braces are a Redis Cluster hash tag: every key of one call lands in one slot, so
    multi-key commands and transactions over a call's keys work on a cluster too.
    """
    return f"{KEY_PREFIX}{kind}:{{{call_sid}}}"


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
    if settings.redis_user:
        opts["username"] = settings.redis_user
    if settings.redis_iam_cache_name:
        from shared.redis_iam import ElastiCacheIamAuth

        opts.pop("password", None)
        opts.pop("username", None)
        opts["credential_provider"] = ElastiCacheIamAuth.from_settings(settings)
    return opts


def redis_client(url: str, *, settings: Settings | None = None, **opts: Any) -> Any:
    """A ``redis.asyncio`` client for ``url``: the one way services make theirs.

    With ``settings``: TLS, AUTH or ElastiCache IAM (:func:`redis_options`) and, with
    ``REDIS_CLUSTER=true``, a :class:`~redis.asyncio.cluster.RedisCluster` that discovers the
    shards from ``url``. ``opts`` (timeouts, retries, ``decode_responses``) pass through.
    """
    if settings is not None:
        opts = {**redis_options(settings), **opts}
    if settings is not None and settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **opts)
    from redis.asyncio import Redis

    return Redis.from_url(url, **opts)
