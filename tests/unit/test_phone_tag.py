"""Destination numbers are shown as keyed tags (audit records, events), never in clear."""

from __future__ import annotations

from shared.logging import field_value
from shared.redact import phone_tag


def test_a_tag_correlates_without_revealing_the_number() -> None:
    a = phone_tag("+12125551234", key=b"token-a")
    assert a == phone_tag("+12125551234", key=b"token-a")  # the same number, the same tag
    assert a != phone_tag("+12125551235", key=b"token-a")
    assert a != phone_tag("+12125551234", key=b"token-b")  # keyed: no rainbow table
    assert a.startswith("tel+1-") and "2125551234" not in a
    assert phone_tag("+442071234567").startswith("tel+44-")
    # It survives the event/log redactor as it is (it is not PHI), unlike the number.
    assert field_value("dest", a) == a
    assert "2125551234" not in str(field_value("dest", "+12125551234"))
