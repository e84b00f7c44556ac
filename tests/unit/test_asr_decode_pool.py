"""The ASR process's decode queue: short utterances batched, never stuck behind a long one."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from services.asr.decode_pool import DecodePool, Job

WAIT_S = 10.0


class Runner:
    """Records each batch; a job whose samples are [-1] blocks until released."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.release = threading.Event()
        self.long_started = threading.Event()

    def __call__(self, jobs: Sequence[Job]) -> None:
        self.batches.append([float(j.samples[0]) for j in jobs])
        if any(j.samples[0] == -1 for j in jobs):
            self.long_started.set()
            assert self.release.wait(WAIT_S)
        for j in jobs:
            j.future.set_result(float(j.samples[0]))


def _audio(v: float) -> np.ndarray:
    return np.full(4, v, dtype=np.float32)


def test_a_short_utterance_is_decoded_while_another_calls_long_one_runs() -> None:
    run = Runner()
    pool = DecodePool(workers=2, batch=4, run=run)
    try:
        long = pool.submit(_audio(-1), batchable=False)
        assert run.long_started.wait(WAIT_S)
        short = pool.submit(_audio(1), batchable=True)
        assert short.result(timeout=WAIT_S) == 1.0  # done while the long one still runs
        assert not long.done()
        run.release.set()
        assert long.result(timeout=WAIT_S) == -1.0
    finally:
        run.release.set()
        pool.close()


def test_short_utterances_waiting_together_share_one_batch_long_ones_go_alone() -> None:
    run = Runner()
    pool = DecodePool(workers=1, batch=3, run=run)
    try:
        blocker = pool.submit(_audio(-1), batchable=False)
        assert run.long_started.wait(WAIT_S)
        futures = [pool.submit(_audio(v), batchable=v < 10) for v in (1, 2, 10, 3, 4)]
        run.release.set()
        assert [f.result(timeout=WAIT_S) for f in futures] == [1.0, 2.0, 10.0, 3.0, 4.0]
        assert blocker.result(timeout=WAIT_S) == -1.0
        # in arrival order, up to 3 short ones per batch, the long one alone
        assert run.batches == [[-1.0], [1.0, 2.0, 3.0], [10.0], [4.0]]
    finally:
        run.release.set()
        pool.close()


def test_a_decode_cancelled_while_it_waits_never_runs_and_failures_reach_the_caller() -> None:
    run = Runner()
    pool = DecodePool(workers=1, batch=4, run=run)
    try:
        pool.submit(_audio(-1), batchable=False)
        assert run.long_started.wait(WAIT_S)
        dropped = pool.submit(_audio(5), batchable=True)
        kept = pool.submit(_audio(6), batchable=True)
        assert dropped.cancel()
        run.release.set()
        assert kept.result(timeout=WAIT_S) == 6.0
        assert all(5.0 not in b for b in run.batches)
    finally:
        run.release.set()
        pool.close()

    def failing(jobs: Sequence[Job]) -> None:
        raise ValueError("bad audio")

    pool = DecodePool(workers=1, batch=1, run=failing)
    try:
        f = pool.submit(_audio(1), batchable=True)
        err = f.exception(timeout=WAIT_S)
        assert isinstance(err, ValueError)
        assert pool.submit(_audio(2), batchable=True).exception(timeout=WAIT_S) is not None
    finally:
        pool.close()


def test_the_pool_gives_memory_back_once_per_idle_spell_never_while_a_decode_runs() -> None:
    run = Runner()
    idle = threading.Semaphore(0)
    calls: list[int] = []

    def on_idle() -> None:
        calls.append(len(run.batches))
        idle.release()

    pool = DecodePool(workers=2, batch=4, run=run, on_idle=on_idle, idle_s=0.05)
    try:
        assert not idle.acquire(timeout=0.3)  # no work yet: nothing to give back
        long = pool.submit(_audio(-1), batchable=False)
        short = pool.submit(_audio(1), batchable=True)
        assert short.result(timeout=WAIT_S) == 1.0 and run.long_started.wait(WAIT_S)
        assert not idle.acquire(timeout=0.3)  # the other decoder is still busy
        run.release.set()
        assert long.result(timeout=WAIT_S) == -1.0
        assert idle.acquire(timeout=WAIT_S)  # both idle: once
        assert not idle.acquire(timeout=0.3)  # and not again while nothing happens
        assert pool.submit(_audio(2), batchable=True).result(timeout=WAIT_S) == 2.0
        assert idle.acquire(timeout=WAIT_S)  # the next spell of work, the next give-back
        assert calls == [2, 3]
    finally:
        run.release.set()
        pool.close()


def test_free_worker_says_whether_a_job_would_start_at_once() -> None:
    """The local recognizer's early decode asks this: speculation only on a free decoder."""
    release = threading.Event()

    def run(jobs: object) -> None:
        release.wait(5)
        for j in jobs:  # type: ignore[attr-defined]
            j.future.set_result(None)

    pool = DecodePool(workers=1, batch=1, run=run)
    try:
        assert pool.free_worker()
        pool.submit(np.zeros(8, dtype=np.float32), batchable=False)
        deadline = time.monotonic() + 2
        while pool.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pool.free_worker()  # the one decoder is busy
    finally:
        release.set()
        pool.close()
