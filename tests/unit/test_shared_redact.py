"""PHI never reaches a log line in clear."""

from __future__ import annotations

import json
import logging

import pytest

from shared.logging import RedactingFormatter, kv
from shared.redact import redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("call from +14155550123 now", "4155550123"),
        ("call (415) 555-0123", "555-0123"),
        ("mail jane.doe@example.org", "jane.doe@example.org"),
        ("sid CA0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
        ("ssn 123-45-6789", "123-45-6789"),
        ("card 4111 1111 1111 1111", "4111 1111 1111 1111"),
        ("born 1980-04-12", "1980-04-12"),
        ("born 04/12/1980", "04/12/1980"),
        ("redis://user:hunter2@db:6379/0", "hunter2"),
    ],
)
def test_redact_removes_phi(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_redact_keeps_ordinary_text() -> None:
    assert redact("turn 3 took 420 ms") == "turn 3 took 420 ms"


def _format(record_fields: dict[str, object], msg: str = "hello") -> dict[str, object]:
    fmt = RedactingFormatter(service="test")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, msg, None, None)
    record.fields = record_fields  # type: ignore[attr-defined]
    out: dict[str, object] = json.loads(fmt.format(record))
    return out


def test_log_line_hashes_call_sid_and_hides_text_and_secrets() -> None:
    sid = "CA0123456789abcdef0123456789abcdef"
    line = _format({"call": sid, "text": "my ssn is 123-45-6789", "api_key": "sk-123"})
    dumped = json.dumps(line)
    assert sid not in dumped
    assert "123-45-6789" not in dumped and "my ssn" not in dumped
    assert "sk-123" not in dumped
    assert str(line["call"]).startswith("call-")


def test_log_message_itself_is_redacted() -> None:
    line = _format({}, msg="caller +14155550123 said hi")
    assert "4155550123" not in str(line["msg"])


def test_kv_builds_extra() -> None:
    assert kv(a=1) == {"extra": {"fields": {"a": 1}}}
