"""Threads that run synthesis jobs earliest deadline first.

An embedded synthesizer (Piper) is CPU-bound: when several calls' replies arrive at once, a
first-in-first-out pool makes a call's first words wait behind other calls' later sentences,
whose audio is not needed for seconds (they play after the sentences before them). Each job
here carries the time its audio is needed (``deadline``, ``time.monotonic()``): the first
sentence of a reply "now", a later one when the audio before it will have played. Measured in
``make bench``, embedded mode with the prompt cache off (docs/performance.md).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlinePool:
    """``workers`` threads; :meth:`submit` queues a call, the earliest deadline runs next."""

    def __init__(self, *, workers: int, name: str) -> None:
        self._heap: list[tuple[float, int, Future[Any], Callable[[], Any]]] = []
        self._order = itertools.count()  # equal deadlines: first come, first served
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, deadline: float, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in a worker thread, before any job with a later deadline.

        Cancelling the future while it waits drops the job.
        """
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("pool is shut down")
            heapq.heappush(self._heap, (deadline, next(self._order), future, lambda: fn(*args)))
            self._cond.notify()
        return future

    def waiting(self) -> int:
        """Jobs queued and not started."""
        with self._cond:
            return len(self._heap)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap:
                    return  # closed and drained
                _, _, future, job = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                future.set_result(job())
            except BaseException as e:  # handed to whoever awaits the future
                future.set_exception(e)

    def shutdown(self, *, wait: bool = True) -> None:
        """Run what is queued, then stop the threads (``wait``: until they have)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()
