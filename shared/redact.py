"""PHI redaction for logs and anything else meant for human eyes.

Patterns cover phone numbers, emails, Twilio SIDs, card numbers, SSNs, dates and URLs with
credentials. Transcript text is never logged unless ``LOG_TRANSCRIPTS`` is set, and then it
still passes through :func:`redact`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Credentials inside URLs: scheme://user:pass@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]+:[^\s/@]+@"), r"\1[CREDENTIALS]@"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[EMAIL]"),
    # Twilio SIDs: two letters + 32 hex (CA call, AC account, MZ stream, ...)
    (re.compile(r"\b[A-Z]{2}[0-9a-fA-F]{32}\b"), "[SID]"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[SSN]"),
    # Card numbers: 13-19 digits, optionally grouped by spaces or dashes
    (re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), "[CARD]"),
    # Dates (DOB): 1990-01-31, 01/31/1990, 31.01.1990
    (re.compile(r"\b\d{4}-\d{1,2}-\d{1,2}\b"), "[DATE]"),
    (re.compile(r"\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b"), "[DATE]"),
    # Phone numbers: E.164 or national formats with 7+ digits (IPv4 addresses are kept, below)
    (re.compile(r"(?<![\w.:-])\+?\d[\d\s().-]{6,}\d(?![\w]|\.\d|:\d)"), "[PHONE]"),
]
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")

# Keys whose values are never logged in clear, whatever they contain.
SECRET_KEYS = frozenset(
    {"password", "token", "api_key", "authorization", "secret", "signature", "auth_token"}
)
TEXT_KEYS = frozenset({"text", "transcript", "heard_text", "utterance"})


def redact(text: str) -> str:
    """Replace PHI-looking substrings of ``text`` with placeholders."""
    # Addresses like 127.0.0.1:4222 are configuration, not PHI: shield them from the
    # phone-number pattern, which would otherwise swallow them.
    shielded: list[str] = []

    def _shield(m: re.Match[str]) -> str:
        shielded.append(m.group(0))
        return f"\x00{len(shielded) - 1}\x00"

    text = _IPV4.sub(_shield, text)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return re.sub("\x00(\\d+)\x00", lambda m: shielded[int(m.group(1))], text)


def redact_value(key: str, value: Any, *, allow_text: bool = False) -> Any:
    """Redact one structured-log field by its key and content."""
    k = key.lower()
    if any(s in k for s in SECRET_KEYS):
        return "[SECRET]" if value else value
    if k in TEXT_KEYS and not allow_text:
        return f"[TEXT len={len(value)}]" if isinstance(value, str) else "[TEXT]"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            str(k2): redact_value(str(k2), v2, allow_text=allow_text) for k2, v2 in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(key, v, allow_text=allow_text) for v in value]
    return value


def sid_tag(sid: str) -> str:
    """A short, non-reversible tag for a SID, so log lines of one call can be correlated."""
    import hashlib

    return "call-" + hashlib.blake2s(sid.encode(), digest_size=4).hexdigest()


def phone_tag(number: str, *, key: bytes = b"") -> str:
    """A short tag for a phone number (audit records, events): correlates, never reveals it.

    Keyed (the gateway passes its Twilio auth token) so the tag cannot be reversed by hashing
    every number of a range; the country code stays readable for operators.
    """
    import hashlib
    import hmac

    digits = "".join(c for c in number if c.isdigit())
    mac = hmac.new(key or b"voiceagent", digits.encode(), hashlib.blake2s).hexdigest()[:10]
    cc = ""
    if number.startswith("+") and digits:
        import phonenumbers

        try:
            cc = f"+{phonenumbers.parse(number).country_code}"
        except phonenumbers.NumberParseException:
            cc = ""
    return f"tel{cc}-{mac}"
