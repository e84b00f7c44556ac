"""The whisper decode queue of one ASR process: ``ASR_DECODERS`` threads, FIFO, with short
utterances decoded together in one batch (decision record 0039).

Measured on the 2-core machine (8 mixed utterances, 7 interleaved rounds, process CPU per
utterance, p50): one at a time 257 ms, two parallel decoders 228 ms, batches of 2 216 ms,
batches of 4 176 ms. A batch is one encoder and one ``generate`` call over windows of the same
size, so only utterances that fit the minimum window are batched, and only with what is already
waiting: a decode never waits for others to arrive, and a short utterance is never put in a batch
with a long one (with two decoders, one busy on a long utterance leaves the other free for the
short ones queued behind it).

When the pool has been idle for ``idle_s`` after work (nothing queued, nothing decoding), it
calls ``on_idle`` once: the engine gives the decodes' freed heap back to the OS there, so a
worker's memory after a busy spell goes back down instead of staying at its peak (issue 12's
soak). A pool that is never idle that long (under load) never pays for it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from services.asr.providers.base import CpuMeter


@dataclass(eq=False)
class Job:
    """One utterance to decode; ``batchable``: it fits the shared minimum window."""

    samples: npt.NDArray[np.float32]
    batchable: bool
    future: Future[Any] = field(default_factory=Future)
    meter: CpuMeter | None = None  # the call's CPU account: the runner adds this job's share


Runner = Callable[[Sequence[Job]], None]  # decodes jobs and sets each one's future
IDLE_S = 1.0  # idle this long after work: ``on_idle`` runs


class DecodePool:
    """Worker threads taking jobs in arrival order, batching the batchable ones."""

    def __init__(
        self,
        *,
        workers: int,
        batch: int,
        run: Runner,
        name: str = "whisper",
        on_idle: Callable[[], None] | None = None,
        idle_s: float = IDLE_S,
    ) -> None:
        self._run = run
        self._batch = max(1, batch)
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_idle = on_idle
        self._idle_s = idle_s
        self._running = 0  # batches being decoded now
        self._worked = False  # work done since on_idle last ran
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    @property
    def busy(self) -> int:
        """Batches being decoded now (at least 1 from inside a runner)."""
        return max(1, self._running)

    def submit(
        self, samples: npt.NDArray[np.float32], *, batchable: bool, meter: CpuMeter | None = None
    ) -> Future[Any]:
        """Queue one decode; cancel the returned future to drop it while it still waits."""
        job = Job(samples=samples, batchable=batchable, meter=meter)
        with self._cond:
            if self._closed:
                raise RuntimeError("decode pool is closed")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet taken by a worker."""
        with self._cond:
            return len(self._jobs)

    def free_worker(self) -> bool:
        """A decoder would start a job submitted now at once (none busy or queued for it)."""
        with self._cond:
            return self._running + len(self._jobs) < len(self._threads)

    def close(self) -> None:
        """Stop the workers once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take(self) -> list[Job] | None:
        with self._cond:
            while True:
                while self._jobs:
                    first = self._jobs.popleft()
                    if first.future.set_running_or_notify_cancel():
                        break
                else:
                    if self._closed:
                        return None
                    if self._idle_due():
                        # Under the lock: a decode submitted meanwhile waits for it (~2 ms).
                        if not self._cond.wait(self._idle_s) and self._idle_due():
                            self._worked = False
                            assert self._on_idle is not None
                            self._on_idle()
                        continue
                    self._cond.wait()
                    continue
                self._running += 1
                self._worked = True
                taken = [first]
                if first.batchable and self._batch > 1:
                    for job in list(self._jobs):
                        if len(taken) >= self._batch:
                            break
                        if job.batchable:
                            self._jobs.remove(job)
                            if job.future.set_running_or_notify_cancel():
                                taken.append(job)
                return taken

    def _idle_due(self) -> bool:
        """Work was done since ``on_idle`` last ran, and now none is queued or running."""
        return self._on_idle is not None and self._worked and not self._jobs and not self._running

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                self._run(jobs)
            except BaseException as e:  # every waiter hears of it; the worker goes on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
            for j in jobs:  # a runner that forgot one must not hang its caller
                if not j.future.done():
                    j.future.set_exception(RuntimeError("decode produced no result"))
            with self._cond:
                self._running -= 1
                self._cond.notify_all()  # a worker waiting for the pool to go idle rechecks
