"""Call recordings (``RECORD_CALLS``, off by default): encrypted at rest, deleted on schedule.

Caller audio (8 kHz mu-law, as Twilio sent it) is streamed to disk while the call goes on:
every :data:`CHUNK_BYTES` (2 s) of audio becomes one Fernet token (AES-128-CBC +
HMAC-SHA256, authenticated, timestamped) on its own line, so a call holds at most one chunk in
memory however long it lasts. Each chunk's plaintext starts with the call SID, its sequence
number and a last-chunk flag: chunks cannot be reordered, dropped, cut off at the end or moved
to another call's file without :meth:`RecordingStore.load` refusing the whole recording. The
file is written as ``RECORDING_DIR/.tmp-*`` (mode 0600) and renamed to
``<call>.ulaw.fernet`` when the call ends. Nothing unencrypted touches the disk.
:meth:`RecordingStore.purge` deletes recordings older than ``RECORDING_RETENTION_DAYS`` by the
timestamp *inside* the first authenticated token, so touching a file cannot extend its life.
A recording written whole as one token (before streaming) still loads and purges.
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
from typing import BinaryIO

from cryptography.fernet import Fernet, InvalidToken

from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)

SUFFIX = ".ulaw.fernet"
MAX_SECONDS = 4 * 3600  # a call longer than this keeps its first 4 hours only
BYTES_PER_S = 8000
CHUNK_BYTES = 2 * BYTES_PER_S  # what one call holds in memory at most
_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAGIC = b"VAR1"
_LAST = 1


def _chunk_header(call_sid: str, seq: int, last: bool) -> bytes:
    sid = call_sid.encode()
    return _MAGIC + struct.pack(">B", len(sid)) + sid + struct.pack(">IB", seq, _LAST * last)


class RecordingWriter:
    """One call's recording, encrypted chunk by chunk into a temporary file as it is made.

    :meth:`add` is called for every 20 ms frame on the event loop: it only appends to a
    bounded buffer, and every 2 s encrypts and appends one ~22 KB line (page cache, tens of
    microseconds). :meth:`close` (blocking: run it in a thread) writes the last chunk and
    renames the file into place.
    """

    def __init__(
        self,
        *,
        call_sid: str,
        fernet: Fernet,
        directory: Path,
        target: Path,
        clock: Callable[[], float],
        max_bytes: int = MAX_SECONDS * BYTES_PER_S,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.call_sid = call_sid
        self._fernet = fernet
        self._target = target
        self._clock = clock
        self._max = max_bytes
        self._chunk = chunk_bytes
        self._buf = bytearray()
        self._seq = 0
        self._size = 0
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        os.fchmod(fd, 0o600)
        self._tmp = Path(tmp)
        self._file: BinaryIO | None = os.fdopen(fd, "wb", buffering=0)

    @property
    def buffered(self) -> int:
        """Bytes of audio held in memory (at most one chunk)."""
        return len(self._buf)

    @property
    def size(self) -> int:
        """Bytes of audio recorded so far."""
        return self._size

    def add(self, frame: bytes) -> None:
        """Record one frame (dropped past ``max_bytes``)."""
        if self._file is None or self._size + len(frame) > self._max:
            return
        self._buf += frame
        self._size += len(frame)
        if len(self._buf) >= self._chunk:
            self._flush(last=False)

    def _flush(self, *, last: bool) -> None:
        assert self._file is not None
        plain = _chunk_header(self.call_sid, self._seq, last) + bytes(self._buf)
        self._file.write(self._fernet.encrypt_at_time(plain, int(self._clock())) + b"\n")
        self._seq += 1
        self._buf.clear()

    def close(self) -> Path:
        """Finish the recording and move it into place (blocking)."""
        if self._file is None:
            return self._target
        try:
            self._flush(last=True)
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._tmp, self._target)
        except BaseException:
            self.abort()
            raise
        return self._target

    def abort(self) -> None:
        """Drop the recording (its temporary file included)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buf.clear()
        self._tmp.unlink(missing_ok=True)


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

    def writer(
        self,
        call_sid: str,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        max_bytes: int = MAX_SECONDS * BYTES_PER_S,
    ) -> RecordingWriter:
        """A writer streaming ``call_sid``'s audio to disk (creates its temporary file)."""
        return RecordingWriter(
            call_sid=call_sid,
            fernet=self._fernet,
            directory=self.directory,
            target=self.path(call_sid),
            clock=self._clock,
            chunk_bytes=chunk_bytes,
            max_bytes=max_bytes,
        )

    def save(self, call_sid: str, audio: bytes) -> Path:
        """Encrypt and store one call's audio at once (blocking: run it in a thread)."""
        w = self.writer(call_sid)
        for i in range(0, len(audio), CHUNK_BYTES):
            w.add(audio[i : i + CHUNK_BYTES])
        return w.close()

    def load(self, call_sid: str) -> bytes | None:
        """The decrypted audio, or None when there is none (or it is not ours / tampered)."""
        try:
            data = self.path(call_sid).read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        try:
            return self._decrypt(call_sid, data)
        except (InvalidToken, ValueError, struct.error):
            log.warning("recording failed authentication", **kv(call=call_sid))
            return None

    def _decrypt(self, call_sid: str, data: bytes) -> bytes:
        lines = data.split(b"\n")
        if len(lines) == 1:  # one whole-call token, as written before streaming
            return self._fernet.decrypt(data)
        if lines[-1] != b"":
            raise ValueError("truncated")
        out = bytearray()
        chunks = lines[:-1]
        for seq, line in enumerate(chunks):
            plain = self._fernet.decrypt(line)
            head = _chunk_header(call_sid, seq, seq == len(chunks) - 1)
            if not plain.startswith(head):
                raise ValueError("chunk out of place")  # reordered, cut, or another call's
            out += plain[len(head) :]
        return bytes(out)

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
            # A call cut off by a gateway crash: never moved into place, purged the same way.
            stamp = _token_time(tmp)
            if (stamp if stamp is not None else tmp.stat().st_mtime) < cutoff:
                tmp.unlink(missing_ok=True)
        if deleted:
            log.info("recordings purged", **kv(count=deleted))
        return deleted


def _token_time(path: Path) -> float | None:
    """The timestamp in the first Fernet token's header (version byte, then 64-bit seconds)."""
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
