"""``TRANSFER_TARGETS``: where calls may be transferred, parsed once for every service.

The agent offers only these targets to the model; the gateway dials only these numbers, so a
compromised worker publishing ``Transfer(to=...)`` cannot redirect a call anywhere else.
"""

from __future__ import annotations

import logging
import re

from shared.logging import kv

log = logging.getLogger(__name__)

_TARGET = re.compile(r"^(?:\+[1-9]\d{6,14}|sips?:[^\s,]+)$")


def parse_targets(spec: str) -> dict[str, str]:
    """``TRANSFER_TARGETS`` ("front_desk=+15551234567, +15557654321") as name -> number.

    A bare number is its own name. Invalid entries are logged (without the value) and skipped.
    """
    targets: dict[str, str] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, number = item.rpartition("=")
        name, number = name.strip() or number.strip(), number.strip()
        if not _TARGET.fullmatch(number):
            log.warning("TRANSFER_TARGETS entry ignored: not +E.164 or sip:", **kv(name=name))
            continue
        targets[name.lower()] = number
    return targets
