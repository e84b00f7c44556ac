"""Bearer-token auth for the gateway's privileged endpoints.

``ADMIN_TOKEN`` is either one token (actor ``admin``) or comma-separated ``name=token`` pairs,
so the audit trail can say who exported what. Tokens are compared with
:func:`hmac.compare_digest` against every configured token (no early exit), so the time taken
says nothing about which token, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re

DEFAULT_ACTOR = "admin"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def parse_tokens(raw: str) -> dict[str, str]:
    """``"tok"`` -> {"admin": "tok"}; ``"ann=t1,bob=t2"`` -> {"ann": "t1", "bob": "t2"}."""
    raw = raw.strip()
    if not raw:
        return {}
    if "=" not in raw:
        return {DEFAULT_ACTOR: raw}
    out: dict[str, str] = {}
    for part in raw.split(","):
        name, sep, token = part.strip().partition("=")
        if not sep or not _NAME.fullmatch(name.strip()) or not token.strip():
            raise ValueError("ADMIN_TOKEN: expected a token or name=token pairs")
        out[name.strip()] = token.strip()
    return out


def _digest(token: str) -> bytes:
    # Equal-length inputs for compare_digest, whatever the presented token's length.
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class AdminAuth:
    """Who (if anyone) an ``Authorization: Bearer`` header authenticates."""

    def __init__(self, *, tokens: dict[str, str]) -> None:
        self._tokens = [(name, _digest(tok)) for name, tok in tokens.items()]

    @classmethod
    def from_setting(cls, raw: str) -> AdminAuth:
        return cls(tokens=parse_tokens(raw))

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def actor(self, authorization: str | None) -> str | None:
        """The actor name for a valid header, else None."""
        if not authorization or not self._tokens or len(authorization) > 4096:
            return None
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        got = _digest(presented.strip())
        found: str | None = None
        for name, want in self._tokens:
            if hmac.compare_digest(got, want) and found is None:
                found = name
        return found
