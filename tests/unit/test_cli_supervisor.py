"""The supervisor behind ``voiceagent up``: restarts crashes with backoff, stops in order."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from voiceagent.supervisor import ProcessSpec, Supervisor

SLEEPER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (print('draining', flush=True), sys.exit(0)))\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


async def _until(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_crashing_child_is_reported_and_restarted_with_backoff() -> None:
    lines: list[str] = []
    crash = ProcessSpec(name="crashy", argv=[sys.executable, "-c", "import sys; sys.exit(3)"])
    sup = Supervisor(specs=[crash], output=lines.append, backoff_initial_s=0.1, backoff_max_s=0.4)
    began = time.monotonic()
    async with sup:
        await _until(lambda: sup.restarts()["crashy"] >= 3)
    elapsed = time.monotonic() - began
    assert elapsed >= 0.1 + 0.2  # backoff doubles: 0.1, 0.2, ...
    assert set(sup.exit_codes("crashy")) == {3}
    assert any("crashy exited with code 3" in line and "restarting" in line for line in lines)


async def test_stop_sends_sigterm_so_children_drain_and_infrastructure_stops_last() -> None:
    lines: list[str] = []
    specs = [
        ProcessSpec(name="infra", argv=[sys.executable, "-c", SLEEPER], tier=0),
        ProcessSpec(name="svc", argv=[sys.executable, "-c", SLEEPER]),
    ]
    sup = Supervisor(specs=specs, output=lines.append)
    await sup.start()
    await _until(lambda: len([line for line in lines if line.endswith("| up")]) == 2)
    assert all(pid is not None for pid in sup.pids().values())
    await sup.stop()
    assert sup.exit_codes("svc") == [0] and sup.exit_codes("infra") == [0]  # drained, not killed
    drained = [line.split("|")[0].strip() for line in lines if line.endswith("draining")]
    assert drained == ["svc", "infra"]
    assert sup.restarts() == {"infra": 0, "svc": 0}
    assert sup.recent_output("svc") == ["up", "draining"]


async def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    lines: list[str] = []
    sup = Supervisor(
        specs=[ProcessSpec(name="stubborn", argv=[sys.executable, "-c", stubborn])],
        output=lines.append,
        stop_timeout_s=0.5,
    )
    await sup.start()
    await _until(lambda: sup.recent_output("stubborn") == ["up"])
    began = time.monotonic()
    await sup.stop()
    assert time.monotonic() - began < 5
    assert sup.exit_codes("stubborn") == [-9]
    assert any("did not stop" in line for line in lines)
