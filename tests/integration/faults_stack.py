"""Shared parts of the fault tests: a stack with two replicas per stage on a private bus.

The stack's NATS and Redis are private (started here, free ports), so the tests can stop and
restart them; the agent's LLM and the TTS provider are in-process fakes (OpenAI and
ElevenLabs wire protocols), so a test can make one turn hang or one segment slow. ASR is the
embedded recognizer: the caller's sentences are real speech, really recognized.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from devkit.fakes.elevenlabs import FakeElevenLabs
from devkit.fakes.openai import FakeOpenAI
from devkit.simulator import CallerTurn, CallResult, SimulatedCall, new_sid, prepare_turns
from shared import subjects
from shared.messages import (
    Event,
    ReplySegment,
    Transcript,
    parse_event,
    parse_reply,
    parse_transcript,
)
from voiceagent.stack import Stack, free_port

TOKEN = "faults-" + "7" * 25
REDIS_SERVER = "/usr/bin/redis-server"
API_KEY = "fault-key"


class RedisServer:
    """A private redis-server on a fixed port: stop and start it again at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        import redis

        while True:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None


@dataclass
class BusLog:
    """Everything on one call's subjects and its heartbeats, timestamped (monotonic)."""

    messages: list[tuple[float, str, bytes, dict[str, str]]] = field(default_factory=list)
    waiters: list[tuple[Callable[[str, bytes], bool], asyncio.Future[float]]] = field(
        default_factory=list
    )

    async def on_msg(self, msg: Any) -> None:
        now = time.monotonic()
        self.messages.append((now, msg.subject, msg.data, dict(msg.headers or {})))
        for pred, fut in list(self.waiters):
            if not fut.done() and _safe(pred, msg.subject, msg.data):
                fut.set_result(now)

    def when(self, pred: Callable[[str, bytes], bool]) -> asyncio.Future[float]:
        """A future set (to the monotonic time) by the first message matching ``pred``."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        for at, s, d, _ in self.messages:
            if _safe(pred, s, d):
                fut.set_result(at)
                return fut
        self.waiters.append((pred, fut))
        return fut

    def events(self, sid: str) -> list[tuple[float, Event]]:
        out = []
        for at, s, d, _ in self.messages:
            if s == subjects.events(sid):
                with contextlib.suppress(ValueError):
                    out.append((at, parse_event(d)))
        return out

    def finals(self, sid: str) -> list[tuple[float, Transcript]]:
        out = []
        for at, s, d, _ in self.messages:
            if s == subjects.transcript(sid):
                m = parse_transcript(d)
                if isinstance(m, Transcript) and m.is_final and m.text.strip():
                    out.append((at, m))
        return out

    def transcripts(self, sid: str) -> list[Any]:
        return [
            parse_transcript(d) for _, s, d, _ in self.messages if s == subjects.transcript(sid)
        ]

    def segments(self, sid: str) -> list[ReplySegment]:
        return [parse_reply(d) for _, s, d, _ in self.messages if s == subjects.reply(sid)]


def _safe(pred: Callable[[str, bytes], bool], subject: str, data: bytes) -> bool:
    try:
        return pred(subject, data)
    except Exception:
        return False


def is_event(sid: str, name: str, **match: Any) -> Callable[[str, bytes], bool]:
    def pred(subject: str, data: bytes) -> bool:
        if subject != subjects.events(sid):
            return False
        ev = parse_event(data)
        return ev.name == name and all(ev.data.get(k) == v for k, v in match.items())

    return pred


def is_final(sid: str, after_id: int = 0) -> Callable[[str, bytes], bool]:
    def pred(subject: str, data: bytes) -> bool:
        if subject != subjects.transcript(sid):
            return False
        m = parse_transcript(data)
        return (
            isinstance(m, Transcript)
            and m.is_final
            and bool(m.text.strip())
            and m.utterance_id > after_id
        )

    return pred


def is_reply(sid: str, utterance_id: int, *, last: bool = False) -> Callable[[str, bytes], bool]:
    """A reply segment answering ``utterance_id`` (``last``: its turn's last one)."""

    def pred(subject: str, data: bytes) -> bool:
        if subject != subjects.reply(sid):
            return False
        seg = parse_reply(data)
        return seg.utterance_id == utterance_id and (seg.last or not last)

    return pred


async def bus_log(nats_url: str, sid: str) -> tuple[NATS, BusLog]:
    """A reconnect-forever connection recording one call (survives a NATS restart)."""

    async def quiet(e: Exception) -> None:
        pass

    nc = await nats.connect(
        nats_url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        error_cb=quiet,
        name="faults-observer",
    )
    log = BusLog()
    await nc.subscribe(subjects.call_all(sid), cb=log.on_msg)
    await nc.subscribe(f"{subjects.SYS}.*.heartbeat.{sid}", cb=log.on_msg)
    await nc.flush()
    return nc, log


class Faults:
    """The running stack, its fakes and its Redis, with helpers to hurt them."""

    def __init__(self, *, stack: Stack, redis: RedisServer, llm: FakeOpenAI, tts: FakeElevenLabs):
        self.stack = stack
        self.redis = redis
        self.llm = llm
        self.tts = tts

    @property
    def nats_url(self) -> str:
        assert self.stack.info is not None
        return self.stack.info.nats_url

    def name_of(self, worker_id: str) -> str:
        """The supervisor name (``asr-2``) of a worker id ending in ``-<pid>``."""
        pid = int(str(worker_id).rsplit("-", 1)[1])
        assert self.stack.supervisor is not None
        for name, p in self.stack.supervisor.pids().items():
            if p == pid:
                return name
        raise LookupError(f"no process with pid {pid}")

    def signal(self, name: str, sig: signal.Signals) -> None:
        assert self.stack.supervisor is not None
        pid = self.stack.supervisor.pids()[name]
        assert pid is not None, f"{name} is not running"
        os.kill(pid, sig)

    def exit_codes(self, name: str) -> list[int]:
        assert self.stack.supervisor is not None
        return self.stack.supervisor.exit_codes(name)

    def logs(self, lines: int = 80) -> str:
        sup = self.stack.supervisor
        return "\n".join(sup.recent_output()[-lines:]) if sup else ""

    async def whole(self, timeout_s: float = 90.0) -> None:
        """Until every supervised process runs and has said it is ready since its last start."""
        sup = self.stack.supervisor
        assert sup is not None
        deadline = time.monotonic() + timeout_s
        while True:
            pids = sup.pids()
            restarts = sup.restarts()
            missing = [
                n
                for n in pids
                if n != "nats"
                and (
                    pids[n] is None
                    or sum(1 for line in sup.recent_output(n) if " ready" in line) < restarts[n] + 1
                )
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not back up: {missing}")
            await asyncio.sleep(0.2)

    async def call(
        self, turns: Sequence[CallerTurn], *, sid: str | None = None, **options: Any
    ) -> tuple[str, asyncio.Task[CallResult]]:
        """Place a simulated call in the background; returns (call sid, its task)."""
        info = self.stack.info
        assert info is not None
        sid = sid or new_sid("CA")
        prepared = await prepare_turns(turns)
        call = SimulatedCall(
            gateway_url=info.gateway_url,
            public_url=info.public_url,
            auth_token=TOKEN,
            nats_url=info.nats_url,
            call_sid=sid,
            greeting_timeout_s=options.pop("greeting_timeout_s", 20),
            reply_timeout_s=options.pop("reply_timeout_s", 25),
            **options,
        )
        return sid, asyncio.create_task(call.run(prepared))


# Short answers keep the calls (played in real time) short.
KNOWLEDGE = """# Test Clinic

## opening hours, open, hours, time
We are open from eight to six, Monday to Friday.
"""


@contextlib.asynccontextmanager
async def fault_stack(*, knowledge: Path, replicas: int = 2) -> AsyncIterator[Faults]:
    """The stack (two replicas per worker stage), private NATS and Redis, in-process fakes.

    ``knowledge``: the agent's knowledge file (write :data:`KNOWLEDGE` there).
    """
    redis = RedisServer()
    redis.start()
    llm = FakeOpenAI(api_key=API_KEY)
    await llm.start()
    tts = FakeElevenLabs(api_key=API_KEY, engine="espeak")
    tts.start()
    port = free_port()
    env = {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # not running: the stack starts it
        "REDIS_URL": redis.url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "ASR_PROVIDER": "local",
        "AGENT_PROVIDER": "openai",
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": API_KEY,
        "TTS_PROVIDER": "elevenlabs",
        "ELEVENLABS_BASE_URL": tts.base_url,
        "ELEVENLABS_API_KEY": API_KEY,
        "KNOWLEDGE_FILE": str(knowledge),
        "TTS_CACHE_TTL_S": "0",  # every segment really synthesized (and killable mid-way)
        "LOG_FORMAT": "text",
    }
    stack = Stack(
        asr=replicas, agent=replicas, tts=replicas, env=env, output=None, stop_timeout_s=15
    )
    try:
        await stack.start()
        faults = Faults(stack=stack, redis=redis, llm=llm, tts=tts)
        try:
            await stack.wait_ready(timeout_s=150)
            await faults.whole()
        except TimeoutError as e:
            raise RuntimeError(f"{e}\n--- service output ---\n{faults.logs()}") from e
        yield faults
    finally:
        await stack.stop()
        tts.stop()
        await llm.stop()
        redis.stop()
