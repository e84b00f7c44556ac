"""The synthesis pool runs what plays first first (services/tts/deadline_pool.py), and the TTS
worker's per-call timeline says when a segment's audio is needed (services/tts/calls.py)."""

from __future__ import annotations

import threading

import pytest

from services.tts.calls import CallRegistry
from services.tts.deadline_pool import DeadlinePool


def _blocked_pool() -> tuple[DeadlinePool, threading.Event]:
    """A one-thread pool whose thread is held until the event is set."""
    pool = DeadlinePool(workers=1, name="test")
    gate, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait()

    pool.submit(0.0, hold)
    assert started.wait(5)
    return pool, gate


def test_waiting_jobs_run_earliest_deadline_first_and_ties_in_arrival_order() -> None:
    pool, gate = _blocked_pool()
    ran: list[str] = []
    later = pool.submit(10.0, ran.append, "a later sentence of call 1")
    first = pool.submit(1.0, ran.append, "call 2's first words")
    tie = pool.submit(1.0, ran.append, "call 3's first words")
    gate.set()
    for f in (later, first, tie):
        f.result(timeout=5)
    assert ran == ["call 2's first words", "call 3's first words", "a later sentence of call 1"]
    pool.shutdown()


def test_a_cancelled_job_never_runs_and_errors_reach_the_caller() -> None:
    pool, gate = _blocked_pool()
    ran: list[int] = []
    dropped = pool.submit(1.0, ran.append, 1)
    assert dropped.cancel()  # a barge-in while the sentence waited

    def boom() -> None:
        raise ValueError("bad model")

    failing = pool.submit(2.0, boom)
    kept = pool.submit(3.0, ran.append, 3)
    gate.set()
    kept.result(timeout=5)
    with pytest.raises(ValueError, match="bad model"):
        failing.result(timeout=5)
    assert ran == [3]
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(0.0, ran.append, 4)


def test_shutdown_finishes_what_was_queued() -> None:
    pool, gate = _blocked_pool()
    queued = [pool.submit(float(i), lambda i=i: i) for i in range(3)]
    assert pool.waiting() == 3
    gate.set()
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in queued] == [0, 1, 2]


def test_a_turns_next_segment_is_needed_once_its_audio_so_far_has_played() -> None:
    call = CallRegistry().get("CA1")
    assert call.needed_at(2, now=100.0) == 100.0  # nothing sent yet: needed now
    call.sent(2, 1.5, now=100.2)  # the first chunks went out at 100.2
    call.sent(2, 2.0, now=100.4)
    assert call.needed_at(2, now=100.5) == pytest.approx(103.7)
    # A new turn starts its own timeline: its first words are needed at once.
    assert call.needed_at(3, now=101.0) == 101.0
    call.sent(3, 0.5, now=101.1)
    assert call.needed_at(3, now=101.2) == pytest.approx(101.6)
