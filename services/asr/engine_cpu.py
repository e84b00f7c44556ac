"""CPU time of a decode, including the native threads the engine computes on.

CTranslate2 runs whisper on threads of its own (``num_workers`` replicas, each with its own
intra-op threads): ``time.thread_time()`` of the Python thread that asked for the decode sees
only the feature extraction around it, about 5% of the decode (measured 2026-12-02: 9-22 ms
of 210-250 ms). Linux lists every thread of the process in ``/proc/self/task``; the ones
Python did not start are the engines' (whisper's, and ONNX Runtime's if it has a pool), and
their CPU counter (``schedstat``, nanoseconds) is read here. Elsewhere only the calling thread
is counted.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

_TASKS = "/proc/self/task"


def native_threads_cpu_s() -> float:
    """CPU seconds spent so far by this process's threads that Python did not start."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return 0.0
    python = {t.native_id for t in threading.enumerate()}
    total_ns = 0
    for tid in tids:
        if not tid.isdigit() or int(tid) in python:
            continue
        try:
            with open(f"{_TASKS}/{tid}/schedstat", encoding="ascii") as f:
                total_ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total_ns / 1e9


@dataclass(frozen=True)
class CpuMark:
    """Where a decode began: this thread's CPU clock and the engines' threads' total."""

    thread_s: float
    native_s: float

    @classmethod
    def now(cls) -> CpuMark:
        """The clocks now."""
        return cls(thread_s=time.thread_time(), native_s=native_threads_cpu_s())

    def spent(self, *, sharing: int = 1) -> float:
        """CPU seconds since the mark: this thread's own, plus the engines' threads' divided
        among the ``sharing`` decodes that ran on them meanwhile."""
        native = max(0.0, native_threads_cpu_s() - self.native_s)
        return max(0.0, time.thread_time() - self.thread_s) + native / max(1, sharing)
