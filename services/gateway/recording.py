"""Call recordings (``RECORD_CALLS``, off by default): encrypted at rest, deleted on schedule.

Caller audio (8 kHz mu-law, as Twilio sent it) is kept in memory for the call and written once
at its end as a Fernet token (AES-128-CBC + HMAC-SHA256, authenticated, timestamped) under
``RECORDING_DIR/<call>.ulaw.fernet`` with mode 0600. Nothing unencrypted touches the disk.
:meth:`RecordingStore.purge` deletes recordings older than ``RECORDING_RETENTION_DAYS`` by the
timestamp *inside* the authenticated token, so touching a file cannot extend its life.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)

SUFFIX = ".ulaw.fernet"
MAX_SECONDS = 4 * 3600  # a call longer than this keeps its first 4 hours only
BYTES_PER_S = 8000
_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RecordingStore:
    """Encrypted recordings in one directory."""

    def __init__(
        self,
        *,
        directory: Path,
        key: bytes,
        retention_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._fernet = Fernet(key)  # raises ValueError on a malformed key
        self._retention = retention_s
        self._clock = clock

    def path(self, call_sid: str) -> Path:
        if not _SID.fullmatch(call_sid):
            raise ValueError("invalid call sid")
        return self.directory / f"{call_sid}{SUFFIX}"

    def save(self, call_sid: str, audio: bytes) -> Path:
        """Encrypt and store one call's audio (atomically; blocking: run it in a thread)."""
        target = self.path(call_sid)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = self._fernet.encrypt_at_time(audio, int(self._clock()))
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(token)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load(self, call_sid: str) -> bytes | None:
        """The decrypted audio, or None when there is none (or it is not ours / tampered)."""
        try:
            token = self.path(call_sid).read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            log.warning("recording failed authentication", **kv(call=call_sid))
            return None

    def purge(self) -> int:
        """Delete recordings past retention; returns how many were deleted."""
        if not self.directory.is_dir():
            return 0
        cutoff = self._clock() - self._retention
        deleted = 0
        for p in self.directory.glob(f"*{SUFFIX}"):
            stamp = _token_time(p)
            if stamp is None or stamp < cutoff:
                # Unreadable or expired: either way it must not outlive retention.
                p.unlink(missing_ok=True)
                deleted += 1
        for tmp in self.directory.glob(".tmp-*"):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink(missing_ok=True)
        if deleted:
            log.info("recordings purged", **kv(count=deleted))
        return deleted


def _token_time(path: Path) -> float | None:
    """The timestamp in a Fernet token's header (version byte, then 64-bit seconds)."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
        raw = base64.urlsafe_b64decode(head)
    except (OSError, ValueError):
        return None
    if len(raw) < 9 or raw[0] != 0x80:
        return None
    return float(struct.unpack(">Q", raw[1:9])[0])


def recording_store(settings: Settings) -> RecordingStore | None:
    """The store when ``RECORD_CALLS`` is on (a missing or bad key is a startup error)."""
    if not settings.record_calls:
        return None
    key = settings.recording_key.get_secret_value()
    if not key:
        raise ValueError("RECORD_CALLS is on but RECORDING_KEY is empty")
    try:
        return RecordingStore(
            directory=settings.recording_dir,
            key=key.encode(),
            retention_s=settings.recording_retention_days * 86400.0,
        )
    except ValueError:
        raise ValueError("RECORDING_KEY is not a valid Fernet key") from None


class CallRecorder:
    """One call's caller audio, in memory until the call ends."""

    def __init__(self, *, call_sid: str, max_bytes: int = MAX_SECONDS * BYTES_PER_S) -> None:
        self.call_sid = call_sid
        self._chunks: list[bytes] = []
        self._size = 0
        self._max = max_bytes

    def add(self, frame: bytes) -> None:
        if self._size + len(frame) <= self._max:
            self._chunks.append(frame)
            self._size += len(frame)

    def audio(self) -> bytes:
        return b"".join(self._chunks)
