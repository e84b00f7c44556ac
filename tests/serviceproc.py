"""One way for tests to run a service as a process and read its log."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ServiceProcess:
    """``python -m services.<service>`` with ``env`` over ours, its stderr collected by line."""

    def __init__(self, service: str, *, env: Mapping[str, str], log_timeout: float = 30) -> None:
        self.log_timeout = log_timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_for_log(self, text: str, timeout: float | None = None) -> None:
        """Return once a log line contains ``text``; AssertionError if the process exits first."""
        deadline = time.monotonic() + (self.log_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            try:
                if text in self.lines.get(timeout=0.1):
                    return
            except queue.Empty:
                assert self.proc.poll() is None, "worker exited:\n" + "".join(self.log)
        raise AssertionError(f"no {text!r} in the worker log:\n" + "".join(self.log))

    def stop(self) -> int:
        """SIGTERM (if still running); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)
