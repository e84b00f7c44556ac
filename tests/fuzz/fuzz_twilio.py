"""atheris harness: the gateway's parsing of everything a Twilio peer controls (not run in CI).

Targets, chosen by the first input byte: ``shared.twilio.parse_inbound`` (every WebSocket text
frame), ``CallTokens.redeem`` (the stream token from ``customParameters``), the ``/voice`` form
and proxy-header handling, and the log redactor (which sees all of it). Any exception other than
the documented ``ValidationError``/``ValueError`` is a finding.

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_twilio.py -max_total_time=600 tests/fuzz/corpus
"""

from __future__ import annotations

import sys
from urllib.parse import parse_qsl

import atheris

with atheris.instrument_imports():
    from pydantic import ValidationError

    from services.gateway.auth import AdminAuth
    from services.gateway.limits import client_ip, forwarded_base, parse_networks
    from services.gateway.security import CallTokens
    from shared.logging import field_value
    from shared.redact import redact
    from shared.twilio import parse_inbound

TOKENS = CallTokens(secret=b"fuzz", ttl_s=60)
TRUSTED = parse_networks("10.0.0.0/8")
AUTH = AdminAuth.from_setting("ann=secret-token")


def one(data: bytes) -> None:
    if not data:
        return
    fdp = atheris.FuzzedDataProvider(data[1:])
    target = data[0] % 5
    if target == 0:
        try:
            parse_inbound(fdp.ConsumeBytes(fdp.remaining_bytes()))
        except ValidationError:
            pass
    elif target == 1:
        token = fdp.ConsumeUnicodeNoSurrogates(200)
        assert not TOKENS.redeem(token, fdp.ConsumeUnicodeNoSurrogates(64))
    elif target == 2:
        parse_qsl(fdp.ConsumeUnicodeNoSurrogates(4096), keep_blank_values=True)
        peer = fdp.ConsumeUnicodeNoSurrogates(40)
        hdrs = {
            "x-forwarded-proto": fdp.ConsumeUnicodeNoSurrogates(20),
            "x-forwarded-host": fdp.ConsumeUnicodeNoSurrogates(80),
        }
        client_ip(peer, fdp.ConsumeUnicodeNoSurrogates(200), TRUSTED)
        fwd = forwarded_base(peer, hdrs, TRUSTED)
        assert fwd is None or "/" not in fwd[1]
    elif target == 3:
        assert AUTH.actor(fdp.ConsumeUnicodeNoSurrogates(300)) in (None, "ann")
    else:
        text = fdp.ConsumeUnicodeNoSurrogates(2000)
        out = redact(text)
        assert "4111111111111111" not in out or "4111111111111111" not in text
        field_value(fdp.ConsumeUnicodeNoSurrogates(12), text)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
