"""ElastiCache IAM authentication: a SigV4-presigned ``connect`` request as the Redis password.

ElastiCache (Redis OSS / Valkey) accepts, for a user created with IAM authentication, the
password ``<cache-name>/?Action=connect&User=<user-id>&X-Amz-...`` (a SigV4 presigned GET for
service ``elasticache``, valid 15 minutes). The token is only checked when a connection
authenticates, so this provider hands each new connection a token younger than
:data:`REFRESH_AFTER_S` and signs a fresh one after that. Signing is local (botocore, the
``aws`` extra): the credentials come from the standard AWS chain (IRSA / pod identity on EKS).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from redis.credentials import CredentialProvider

TOKEN_TTL_S = 900  # ElastiCache refuses a token older than 15 minutes
REFRESH_AFTER_S = 600.0  # re-sign well before that: a connection may take a while to open
_now = time.time  # the refresh clock (tests freeze it)


class ElastiCacheIamAuth(CredentialProvider):
    """``(user, token)`` for redis-py's ``credential_provider``, re-signed before expiry."""

    def __init__(
        self,
        *,
        user: str,
        cache_name: str,
        region: str,
        credentials: Any = None,
        serverless: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not (user and cache_name and region):
            raise ValueError(
                "ElastiCache IAM auth needs REDIS_USER, REDIS_IAM_CACHE_NAME and a region "
                "(REDIS_IAM_REGION or AWS_REGION)"
            )
        self.user = user
        self.cache_name = cache_name.lower()
        self.region = region
        self._credentials = credentials
        self._serverless = serverless
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._signed_at = float("-inf")

    @classmethod
    def from_settings(cls, settings: Any) -> ElastiCacheIamAuth:
        """From ``REDIS_USER``, ``REDIS_IAM_CACHE_NAME``, ``REDIS_IAM_REGION`` (or AWS_REGION)."""
        region = (
            settings.redis_iam_region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION", "")
        )
        return cls(
            user=settings.redis_user,
            cache_name=settings.redis_iam_cache_name,
            region=region,
            serverless=settings.redis_iam_serverless,
        )

    def token(self) -> str:
        """The current token: re-signed when older than :data:`REFRESH_AFTER_S`."""
        with self._lock:
            now = (self._clock or _now)()
            if now - self._signed_at >= REFRESH_AFTER_S:
                self._token = self._sign()
                self._signed_at = now
            return self._token

    def get_credentials(self) -> tuple[str, str]:
        return self.user, self.token()

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()

    def _sign(self) -> str:
        import botocore.session
        from botocore.model import ServiceId
        from botocore.signers import RequestSigner

        session = botocore.session.get_session()
        credentials = self._credentials or session.get_credentials()
        if credentials is None:
            raise RuntimeError("ElastiCache IAM auth: no AWS credentials found")
        signer = RequestSigner(
            ServiceId("elasticache"),
            self.region,
            "elasticache",
            "v4",
            credentials,
            session.get_component("event_emitter"),
        )
        query = {"Action": "connect", "User": self.user}
        if self._serverless:
            query["ResourceType"] = "ServerlessCache"
        request = {
            "method": "GET",
            "url": f"https://{self.cache_name}/?{urlencode(query)}",
            "body": {},
            "headers": {},
            "context": {},
        }
        signed: str = signer.generate_presigned_url(
            request, operation_name="connect", expires_in=TOKEN_TTL_S, region_name=self.region
        )
        return signed.removeprefix("https://")
