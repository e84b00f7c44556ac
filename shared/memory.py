"""Giving freed native heap back to the OS.

glibc keeps memory a process freed for reuse (per thread arena) instead of returning it: after
a burst of work (whisper decodes of many callers at once, a gateway's VAD models) the
resident size stays at the burst's peak. :func:`give_back_memory` returns it; call it when a
burst is over, not on a hot path (it walks every arena: ~2 ms after a decode).
"""

from __future__ import annotations

import ctypes


def give_back_memory() -> None:
    """Ask glibc to return freed heap to the OS (``malloc_trim``); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused, only not returned
        pass
