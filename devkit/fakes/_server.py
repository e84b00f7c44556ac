"""What every fake shares: serving on loopback (in the running loop or in a thread), the
``--fault KIND[:TIMES]`` command-line option and the queue of injected faults."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Iterator
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

import uvicorn
from starlette.types import ASGIApp

__all__ = [
    "FaultQueue",
    "LoopbackServer",
    "QuietServer",
    "ThreadedFake",
    "add_fault_option",
    "bind",
    "cli_parser",
    "parse_fault",
    "serve_in_thread",
    "take_fault",
    "uvicorn_server",
]


class QuietServer(uvicorn.Server):
    """uvicorn without its signal capture: in process, the host (pytest, a worker) owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port) for uvicorn's ``sockets=``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def uvicorn_server(
    app: ASGIApp, *, lifespan: Literal["auto", "on", "off"] = "off", quiet: bool = False
) -> uvicorn.Server:
    """A uvicorn server for a fake: warnings only, no access log, 1 s graceful shutdown."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        timeout_graceful_shutdown=1,
    )
    return QuietServer(config) if quiet else uvicorn.Server(config)


class LoopbackServer:
    """Serve an ASGI app with uvicorn on 127.0.0.1 inside the running event loop (for fakes)."""

    def __init__(self, *, app: ASGIApp, port: int = 0, host: str = "127.0.0.1") -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        sock = bind(self._host, self._port)
        port = sock.getsockname()[1]
        self._server = uvicorn_server(self._app, lifespan="auto", quiet=True)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("server exited during start-up")
            await asyncio.sleep(0.01)
        self.url = f"http://{self._host}:{port}"

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = self._task = None


def serve_in_thread(
    serve: Callable[[], Coroutine[Any, Any, None]],
    *,
    name: str,
    ready: Callable[[], bool],
    what: str,
    within_s: float = 10.0,
) -> threading.Thread:
    """Run ``asyncio.run(serve())`` in a daemon thread; return it once ``ready()``.

    RuntimeError (chained to the server's own error, if any) when it does not get ready.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as e:  # surfaced below, to the caller of start()
            errors.append(e)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if ready():
            return thread
        if not thread.is_alive():
            break
        time.sleep(0.01)
    raise RuntimeError(f"{what} did not start") from (errors[0] if errors else None)


class ThreadedFake:
    """Base of the fakes that uvicorn serves from a background thread (``with Fake() as f``).

    Subclasses set ``host``, ``port`` (0: any free port; the bound one once serving), ``app``
    and call ``super().__init__()``; ``_serving``/``_stopping`` are their hooks.
    """

    what = "fake"  # for the start-up error
    thread_name = "fake"
    host: str
    port: int
    app: ASGIApp

    def __init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` once started."""
        return f"http://{self.host}:{self.port}"

    def _serving(self) -> None:
        """Called in the server's loop just before it starts."""

    def _stopping(self) -> None:
        """Called from :meth:`stop` once the server was told to exit."""

    async def serve(self) -> None:
        """Serve until :meth:`stop` (or SIGINT/SIGTERM when run in the main thread)."""
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._serving()
        self._server = uvicorn_server(self.app)
        await self._server.serve(sockets=[sock])

    def start(self) -> str:
        """Serve in a background thread; returns :attr:`base_url` once accepting."""
        if self._thread is None:
            self._thread = serve_in_thread(
                self.serve,
                name=self.thread_name,
                ready=lambda: self._server is not None and self._server.started,
                what=self.what,
            )
        return self.base_url

    def stop(self) -> None:
        """Stop the server and join its thread."""
        if self._server is None:
            return
        self._server.should_exit = True
        self._stopping()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Counted(Protocol):
    times: int

    @property
    def kind(self) -> str: ...


F = TypeVar("F", bound=_Counted)


def take_fault(faults: list[F]) -> F | None:
    """The fault for the next request, counting it down (``times`` -1: never used up).

    The caller holds whatever lock guards ``faults``.
    """
    if not faults:
        return None
    fault = faults[0]
    if fault.times > 0:
        fault.times -= 1
        if fault.times == 0:
            faults.pop(0)
    return fault


class FaultQueue(Generic[F]):
    """Injected faults, served in order to the next requests; safe across threads."""

    def __init__(self, kinds: Collection[str]) -> None:
        self.kinds = kinds
        self._lock = threading.Lock()
        self._faults: list[F] = []

    def add(self, fault: F) -> None:
        """Queue ``fault``; ValueError unless its ``times`` is positive or -1 and its kind known."""
        if fault.times == 0 or fault.kind not in self.kinds:
            raise ValueError("times must be positive or -1, kind one of FAULT_KINDS")
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self) -> F | None:
        """The fault for the next request (None: serve it normally)."""
        with self._lock:
            return take_fault(self._faults)


def parse_fault(kinds: Collection[str]) -> Callable[[str], tuple[Any, int]]:
    """An argparse ``type=`` for ``KIND[:TIMES]`` (TIMES omitted: -1, every request)."""

    def parse(text: str) -> tuple[Any, int]:
        kind, _, times = text.partition(":")
        if kind not in kinds:
            raise argparse.ArgumentTypeError(f"fault must be one of {', '.join(kinds)}")
        return kind, int(times) if times else -1

    return parse


def add_fault_option(
    parser: argparse.ArgumentParser, kinds: Collection[str], *, per: str = "request"
) -> None:
    """``--fault KIND[:TIMES]``, repeatable; ``args.fault`` is a list of ``(kind, times)``."""
    parser.add_argument(
        "--fault",
        type=parse_fault(kinds),
        action="append",
        default=[],
        help=f"KIND[:TIMES], KIND in {{{','.join(kinds)}}}; TIMES omitted: every {per}",
    )


def cli_parser(doc: str | None, *, port: int) -> argparse.ArgumentParser:
    """An argument parser described by ``doc``'s first line, with ``--host`` and ``--port``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    return parser
