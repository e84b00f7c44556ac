"""Run a set of processes: prefix their output, restart crashes with backoff, stop in order.

Children run in their own session (Ctrl-C in the terminal reaches only the supervisor, which
then SIGTERMs them so they drain) and, on Linux, get SIGTERM if the supervisor dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

Output = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """One supervised process.

    ``tier``: lower tiers start first and stop last (0: infrastructure such as nats-server).
    ``env``: added to the supervisor's own environment.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    tier: int = 1
    restart: bool = True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Child:
    spec: ProcessSpec
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=300))
    task: asyncio.Task[None] | None = None
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Start, watch and stop processes; use as ``async with Supervisor(specs=...) as sup``.

    ``output`` gets the children's lines, prefixed with their names; ``events`` (default: the
    same) gets the supervisor's own reports: exits, restarts, kills.
    """

    def __init__(
        self,
        *,
        specs: Sequence[ProcessSpec],
        output: Output | None = print,
        events: Output | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 15.0,
        stable_after_s: float = 30.0,
        stop_timeout_s: float = 20.0,
        cwd: str | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("process names must be unique")
        self._children = {s.name: _Child(spec=s) for s in specs}
        self._output = output  # the children's lines
        self._events = events or output  # our own: exits, restarts, kills
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._stable_after = stable_after_s
        self._stop_timeout = stop_timeout_s
        self._cwd = cwd
        self._stopping = asyncio.Event()

    # ---------------------------------------------------------------- public

    async def start(self) -> None:
        """Spawn every process (lower tiers first); returns once all are spawned."""
        for tier in sorted({c.spec.tier for c in self._children.values()}):
            for child in self._children.values():
                if child.spec.tier == tier:
                    spawned = asyncio.get_running_loop().create_future()
                    child.task = asyncio.create_task(self._watch(child, spawned))
                    await spawned

    async def stop(self) -> None:
        """SIGTERM by tier (highest first), wait for each to exit, SIGKILL after the timeout."""
        self._stopping.set()
        for tier in sorted({c.spec.tier for c in self._children.values()}, reverse=True):
            group = [c for c in self._children.values() if c.spec.tier == tier]
            for child in group:
                self._signal(child, signal.SIGTERM)
            await asyncio.gather(*(self._reap(c) for c in group))
        tasks = [c.task for c in self._children.values() if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def kill(self) -> None:
        """SIGKILL everything now (a second Ctrl-C)."""
        self._stopping.set()
        for child in self._children.values():
            self._signal(child, signal.SIGKILL)

    def pids(self) -> dict[str, int | None]:
        """Current pid of each process (``None`` while it is down)."""
        return {
            n: (c.proc.pid if c.proc and c.proc.returncode is None else None)
            for n, c in self._children.items()
        }

    def restarts(self) -> dict[str, int]:
        """How many times each process was restarted after exiting."""
        return {n: c.restarts for n, c in self._children.items()}

    def exit_codes(self, name: str) -> list[int]:
        """Exit codes of ``name``'s past runs, oldest first."""
        return list(self._children[name].exit_codes)

    def recent_output(self, name: str | None = None) -> list[str]:
        """The last lines each process printed (all processes when ``name`` is ``None``)."""
        if name is not None:
            return list(self._children[name].lines)
        return [f"{n}| {line}" for n, c in self._children.items() for line in c.lines]

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---------------------------------------------------------------- internals

    def _say(self, line: str) -> None:
        if self._events is not None:
            self._events(line)

    def _signal(self, child: _Child, sig: signal.Signals) -> None:
        proc = child.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def _reap(self, child: _Child) -> None:
        proc = child.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(proc.wait(), self._stop_timeout)
        except TimeoutError:
            self._say(f"{child.spec.name} did not stop within {self._stop_timeout:.0f} s: killed")
            self._signal(child, signal.SIGKILL)
            await proc.wait()

    async def _spawn(self, child: _Child) -> asyncio.subprocess.Process:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **child.spec.env}
        return await asyncio.create_subprocess_exec(
            *child.spec.argv,
            env=env,
            cwd=self._cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    async def _pump(self, child: _Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        width = max(len(n) for n in self._children)
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line over the stream limit: skip it, keep reading
                continue
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            child.lines.append(line)
            if self._output is not None:
                self._output(f"{child.spec.name:<{width}} | {line}")

    async def _watch(self, child: _Child, spawned: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._backoff_initial
        name = child.spec.name
        while not self._stopping.is_set():
            began = loop.time()
            try:
                proc = child.proc = await self._spawn(child)
            except OSError as e:
                self._say(f"{name} failed to start: {e}")
                code = -1
                proc = None
            if not spawned.done():
                spawned.set_result(None)
            if proc is not None:
                pump = asyncio.create_task(self._pump(child, proc))
                code = await proc.wait()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pump, 2.0)
            child.exit_codes.append(code)
            if self._stopping.is_set():
                return
            ran = loop.time() - began
            if ran >= self._stable_after:
                backoff = self._backoff_initial
            if not child.spec.restart:
                self._say(f"{name} exited with code {code}")
                return
            child.restarts += 1
            last = f"; last output: {child.lines[-1][:200]}" if child.lines else ""
            self._say(
                f"{name} exited with code {code} after {ran:.1f} s; "
                f"restarting in {backoff:.1f} s (restart #{child.restarts}){last}"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self._backoff_max)
