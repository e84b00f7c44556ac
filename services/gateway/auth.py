"""Bearer-token auth for the gateway's privileged endpoints.

``ADMIN_TOKEN`` is one of two unambiguous forms (docs/security.md):

- **one token** (actor ``admin``): the whole value, when it has no ``,`` and no ``:``. Any
  printable secret works, base64 with ``+``, ``/`` and trailing ``=`` padding included;
- **named tokens**, so the audit trail can say who exported what: ``name:token`` pairs
  separated by commas (``ann:<secret>,bob:<secret>``); names ``[A-Za-z0-9_.@-]``, tokens at
  least :data:`MIN_NAMED_TOKEN` characters without ``,`` or ``:``.

Anything else (the retired ``name=token`` form, an empty or short pair, a repeated name or
token, control characters) raises :class:`ValueError` with one line saying what to write, and
the gateway refuses to start: a half-understood value must never silently become a different
token (``abc==`` once became the token ``=``) or turn the console off.

Tokens are compared with :func:`hmac.compare_digest` against every configured token (no early
exit), so the time taken says nothing about which token, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re

DEFAULT_ACTOR = "admin"
MIN_NAMED_TOKEN = 16
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces (a header value)
FORMS = "one token (no ',' or ':'), or name:token pairs separated by commas"


def parse_tokens(raw: str) -> dict[str, str]:
    """``"tok"`` -> {"admin": "tok"}; ``"ann:t1...,bob:t2..."`` -> {"ann": "t1...", ...}.

    Raises ``ValueError`` (one line, never echoing the secret) for an ambiguous value.
    """
    raw = raw.strip()
    if not raw:
        return {}
    if not _PRINTABLE.fullmatch(raw):
        raise ValueError("ADMIN_TOKEN has spaces or non-printable characters; expected " + FORMS)
    if "," not in raw and ":" not in raw:
        if "=" in raw.rstrip("="):
            # Not base64 padding: the retired ``name=token`` form, or a secret that reads like
            # it. Guessing either way could hand out the wrong token, so refuse.
            raise ValueError(
                "ADMIN_TOKEN has '=' inside (the old name=token form?); write name:token "
                "pairs, or use a token without an inner '=' (base64 padding at the end is fine)"
            )
        return {DEFAULT_ACTOR: raw}
    out: dict[str, str] = {}
    for part in raw.split(","):
        name, sep, token = part.partition(":")
        if not sep or not _NAME.fullmatch(name) or ":" in token:
            old = " (name=token is the old form)" if "=" in name else ""
            raise ValueError(f"ADMIN_TOKEN: an entry is not name:token{old}; expected {FORMS}")
        if len(token) < MIN_NAMED_TOKEN:
            raise ValueError(
                f"ADMIN_TOKEN: the token of {name!r} is shorter than {MIN_NAMED_TOKEN} "
                f"characters; expected {FORMS}"
            )
        if name in out or token in out.values():
            raise ValueError(f"ADMIN_TOKEN: {name!r} or its token appears twice")
        out[name] = token
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
        """From ``ADMIN_TOKEN``; ``ValueError`` (one line) when the value is ambiguous."""
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
