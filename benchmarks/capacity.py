"""Hot-path capacity of single processes, measured over the real protocols.

- :func:`asr_intake`: one ASR worker (``ASR_PROVIDER=null``: audio consumed, nothing
  recognized) claims N calls through the claim protocol; a publisher speaking the NATS wire
  protocol sends each call's 20 ms frames on ``voice.<call>.audio.in.<worker>`` at 50 frames/s.
  Counts what the worker took in (its ``/metrics``), its CPU and memory per call, and checks the
  memory is given back when the calls end.
- :func:`gateway_capacity`: one gateway process serves N simulated Twilio calls
  (:class:`~benchmarks.load.LightCall` in streaming mode) while this process plays the TTS
  workers (reply audio on ``voice.<call>.audio.out``). Counts inbound frames that reached the
  ASR worker, outbound frames that reached the callers, pacing jitter and the gateway's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import CpuMeter, percentile, proc_ticks, rss_mib
from shared import headers as H
from shared import subjects
from shared.audio import FRAME_BYTES, FRAME_MS, MULAW_SILENCE
from shared.messages import AsrClaim, AsrClaimReply, CallEnded, CallStarted, ReplySegment
from voiceagent.supervisor import ProcessSpec, Supervisor

Output = Callable[[str], None]
LOADGEN_LATE_MS = 20.0  # a load generator later than this (p99) is not keeping real time
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.eE+-]+)$")


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition -> {(name, labels): value} (counters and gauges)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        labels = frozenset(
            (k, v.strip('"')) for k, _, v in (p.partition("=") for p in m.group(2).split(",") if p)
        )
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of ``name`` over samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET a ``/metrics`` page."""
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        resp = await client.get(url)
    return parse_metrics(resp.text)


# ---------------------------------------------------------------- a raw NATS publisher


class RawPublisher:
    """Publishes audio frames in bulk over the NATS client protocol (``HPUB``), cheaply.

    A load generator must cost less than what it loads: one write per 20 ms tick carries every
    call's frame, with the same headers the gateway sets.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        from urllib.parse import urlsplit

        u = urlsplit(self._url)
        reader, writer = await asyncio.open_connection(u.hostname, u.port or 4222)
        await reader.readline()  # INFO
        opts = {"verbose": False, "pedantic": False, "headers": True, "name": "bench-publisher"}
        writer.write(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
        await writer.drain()
        self._writer = writer
        self._reader_task = asyncio.create_task(self._pong(reader, writer))

    @staticmethod
    async def _pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")

    @staticmethod
    def frame(subject: str, seq: int, payload: bytes) -> bytes:
        """One ``HPUB`` of an inbound audio frame (headers as the gateway sets them)."""
        hdr = (
            f"NATS/1.0\r\n{H.SEQ}: {seq}\r\n"
            f"{H.TS_MS}: {(seq - 1) * FRAME_MS}\r\n{H.SENT_NS}: {time.time_ns()}\r\n\r\n"
        ).encode()
        total = len(hdr) + len(payload)
        return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), len(hdr), total, hdr, payload)

    async def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


# ---------------------------------------------------------------- ASR intake


@dataclass
class IntakeResult:
    """What one ASR worker took in."""

    calls: int
    claimed: int = 0
    seconds: float = 0.0
    frames_sent: int = 0
    frames_in: float = 0.0
    dropped: float = 0.0
    slow_consumer: float = 0.0
    cpu_percent: float = 0.0
    rss_base_mib: float | None = None
    rss_peak_mib: float | None = None
    rss_after_mib: float | None = None
    active_after: float | None = None
    publisher_late_ms_p99: float | None = None

    @property
    def lost(self) -> int:
        return max(0, self.frames_sent - int(self.frames_in))

    @property
    def per_call_kib(self) -> float | None:
        if self.rss_base_mib is None or self.rss_peak_mib is None or not self.claimed:
            return None
        return (self.rss_peak_mib - self.rss_base_mib) * 1024 / self.claimed

    @property
    def ok(self) -> bool:
        return self.claimed == self.calls and self.lost == 0 and not self.dropped

    @property
    def calls_per_core(self) -> float | None:
        """Calls one fully available core takes in at this efficiency (frames per CPU-second
        over 50): a ratio that holds when other work on the machine starves the worker."""
        cpu_s = self.cpu_percent / 100 * self.seconds
        if cpu_s <= 0:
            return None
        return self.frames_in / cpu_s / 50

    def describe(self) -> str:
        fps = self.frames_in / self.seconds if self.seconds else 0.0
        per_call = self.per_call_kib
        lines = [
            f"calls claimed       {self.claimed}/{self.calls}",
            f"frames sent         {self.frames_sent} in {self.seconds:.1f} s "
            f"({self.frames_sent / max(self.seconds, 1e-9):.0f}/s)",
            f"frames taken in     {self.frames_in:.0f} ({fps:.0f}/s); lost {self.lost}, "
            f"dropped {self.dropped:.0f}, slow-consumer {self.slow_consumer:.0f}",
            f"worker CPU          {self.cpu_percent:.0f}% of one core: "
            f"{self.frames_in / max(self.cpu_percent / 100 * self.seconds, 1e-9):.0f} frames per "
            f"CPU-second, i.e. ~{self.calls_per_core or 0:.0f} calls per core",
            f"worker memory       {self.rss_base_mib or 0:.0f} MiB idle, "
            f"{self.rss_peak_mib or 0:.0f} MiB with the calls"
            + (f" (~{per_call:.0f} KiB per call)" if per_call is not None else "")
            + f", {self.rss_after_mib or 0:.0f} MiB after they ended "
            f"(active calls then: {self.active_after if self.active_after is not None else '-'})",
            f"publisher late p99  {self.publisher_late_ms_p99 or 0:.1f} ms",
            "result              "
            + (
                f"OK: one ASR worker takes in {self.calls} calls"
                if self.ok
                else f"NOT MET at {self.calls} calls"
            ),
        ]
        if (self.publisher_late_ms_p99 or 0) > LOADGEN_LATE_MS:
            lines.append(
                "warning             the publisher could not keep real time on this machine "
                "(CPU starved): the figures measure the machine, not the worker's capacity"
            )
        return "\n".join(lines)


def _free_port() -> int:
    from voiceagent.ports import free_port

    return free_port()


async def _private_nats(tmp: str) -> tuple[ProcessSpec, str]:
    from voiceagent.stack import nats_spec

    return nats_spec(f"nats://127.0.0.1:{_free_port()}", store_dir=Path(tmp))


async def _wait_port(url: str, timeout_s: float = 10.0) -> None:
    from urllib.parse import urlsplit

    from voiceagent.ports import reachable

    u = urlsplit(url)
    deadline = time.monotonic() + timeout_s
    while not reachable(u.hostname or "127.0.0.1", u.port or 0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        await asyncio.sleep(0.05)


async def _claim(nc: Any, sid: str, *, tries: int = 40) -> str | None:
    """Claim ``sid`` as a gateway would; the id of the worker that took it, or None."""
    claim = AsrClaim(call_sid=sid, gateway_id="bench")
    for _ in range(tries):
        try:
            msg = await nc.request(subjects.ASR_CLAIM, claim.to_bytes(), timeout=2.0)
            reply = AsrClaimReply.model_validate_json(msg.data)
            if reply.accepted:
                return reply.worker_id
        except Exception:
            pass
        await asyncio.sleep(0.1)
    return None


async def asr_intake(
    *, calls: int = 1000, seconds: float = 10.0, out: Output = print, logs: Output | None = None
) -> IntakeResult:
    """One ASR worker, ``calls`` claimed calls at 50 frames/s each for ``seconds``."""
    import nats

    res = IntakeResult(calls=calls)
    metrics_port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp:
        nats_proc, url = await _private_nats(tmp)
        env = {
            "NATS_URL": url,
            "ASR_PROVIDER": "null",
            "ASR_MAX_CALLS": str(calls),
            "METRICS_PORT": str(metrics_port),
            "LOG_LEVEL": "WARNING",
            "REDIS_URL": "",
        }
        worker = ProcessSpec(name="asr-1", argv=[sys.executable, "-m", "services.asr"], env=env)
        sup = Supervisor(specs=[nats_proc, worker], output=logs, events=logs)
        await sup.start()
        nc = None
        pub = RawPublisher(url)
        try:
            await _wait_port(url)
            nc = await nats.connect(url, name="bench-claims")
            await _wait_port(f"nats://127.0.0.1:{metrics_port}", 30.0)
            pid = sup.pids()["asr-1"]
            assert pid is not None
            sids = [f"CAbench{i:05d}{os.getpid()}" for i in range(calls)]
            first = await _claim(nc, sids[0])
            if first is None:
                raise RuntimeError("the ASR worker does not accept claims")
            await asyncio.sleep(0.5)
            res.rss_base_mib = rss_mib(pid)
            out(f"    claiming {calls} calls ...")
            held: list[str | None] = [first]
            for i in range(1, calls, 100):
                held += await asyncio.gather(*(_claim(nc, s) for s in sids[i : i + 100]))
            res.claimed = sum(w is not None for w in held)
            await pub.connect()
            mpage = f"http://127.0.0.1:{metrics_port}/metrics"
            before = await scrape(mpage)
            payload = bytes([MULAW_SILENCE - 1]) * FRAME_BYTES
            subj = [subjects.audio_in(s, w or first) for s, w in zip(sids, held, strict=True)]
            meter = CpuMeter({"asr": pid})
            meter.start()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            ticks = int(seconds * 1000 / FRAME_MS)
            late: list[float] = []
            out(f"    {calls} calls x 50 frames/s for {seconds:.0f} s ...")
            for k in range(1, ticks + 1):
                delay = t0 + k * FRAME_MS / 1000 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late.append(-delay * 1000)
                await pub.send(b"".join(RawPublisher.frame(s, k, payload) for s in subj))
                res.frames_sent += len(subj)
            res.seconds = loop.time() - t0
            await asyncio.sleep(1.0)  # the worker empties its queues
            res.cpu_percent = meter.stop().get("asr", 0.0)
            res.rss_peak_mib = rss_mib(pid)
            after = await scrape(mpage)
            res.frames_in = metric(after, "voice_frames_total", service="asr", direction="in")
            res.frames_in -= metric(before, "voice_frames_total", service="asr", direction="in")
            res.dropped = metric(after, "voice_frames_dropped_total", service="asr")
            res.dropped -= metric(before, "voice_frames_dropped_total", service="asr")
            res.slow_consumer = metric(after, "voice_slow_consumer_drops_total")
            res.slow_consumer -= metric(before, "voice_slow_consumer_drops_total")
            res.publisher_late_ms_p99 = percentile(late, 99) if late else 0.0
            for s in sids:
                await nc.publish(subjects.control(s), CallEnded(call_sid=s).to_bytes())
            await nc.flush()
            await asyncio.sleep(3.0)
            res.rss_after_mib = rss_mib(pid)
            res.active_after = metric(await scrape(mpage), "voice_active_calls", service="asr")
        finally:
            await pub.close()
            if nc is not None:
                await nc.close()
            await sup.stop()
    return res


# ---------------------------------------------------------------- gateway capacity


@dataclass
class GatewayResult:
    """What one gateway process did with N calls."""

    calls: int
    seconds: float = 0.0
    calls_failed: int = 0
    frames_sent: int = 0
    frames_at_asr: float = 0.0
    out_published: int = 0
    out_received: int = 0
    jitter_p99: float | None = None
    gateway_cpu: float = 0.0
    bench_cpu: float = 0.0
    rss_before_mib: float | None = None
    rss_peak_mib: float | None = None
    rss_after_mib: float | None = None
    caller_late_ms_p99: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def lost_in(self) -> int:
        return max(0, self.frames_sent - int(self.frames_at_asr))

    @property
    def lost_out(self) -> int:
        return max(0, self.out_published - self.out_received)

    @property
    def ok(self) -> bool:
        return not (self.calls_failed or self.lost_in or self.lost_out)

    @property
    def calls_per_core(self) -> float | None:
        """Calls the gateway would serve on one full core at this CPU cost per call."""
        return self.calls / (self.gateway_cpu / 100) if self.gateway_cpu > 0 else None

    def describe(self) -> str:
        return "\n".join(
            [
                f"calls               {self.calls} for {self.seconds:.0f} s, failed "
                f"{self.calls_failed}" + (f" ({self.failures[0]})" if self.failures else ""),
                f"inbound frames      {self.frames_sent} sent, {self.frames_at_asr:.0f} reached "
                f"the ASR worker: lost {self.lost_in}",
                f"outbound frames     {self.out_published} published, {self.out_received} "
                f"reached the callers: lost {self.lost_out}",
                f"pacing jitter p99   {self.jitter_p99 or 0:.1f} ms",
                f"gateway CPU         {self.gateway_cpu:.0f}% of one core, "
                f"~{self.calls_per_core or 0:.0f} calls per core "
                f"(load generator: {self.bench_cpu:.0f}%; its clock late p99 "
                f"{self.caller_late_ms_p99 or 0:.1f} ms)",
                f"gateway memory      {self.rss_before_mib or 0:.0f} MiB idle, "
                f"{self.rss_peak_mib or 0:.0f} MiB with the calls, "
                f"{self.rss_after_mib or 0:.0f} MiB after they ended",
                "result              "
                + (
                    f"OK: one gateway process served {self.calls} calls, no frame lost"
                    if self.ok
                    else f"NOT MET at {self.calls} calls"
                ),
            ]
            + (
                [
                    "warning             the simulated callers could not keep real time on "
                    "this machine (CPU starved): losses and jitter are the machine's, not only "
                    "the gateway's"
                ]
                if (self.caller_late_ms_p99 or 0) > LOADGEN_LATE_MS
                else []
            )
        )


class FakeTts:
    """Plays the TTS workers for :func:`gateway_capacity`: reply audio for every started call.

    Each call gets a ``seg_s`` segment every ``every_s`` seconds (one ``ReplySegment`` and its
    audio in 100 ms chunks, as the TTS worker streams it), until :meth:`stop`.
    """

    def __init__(self, nc: Any, *, seg_s: float = 2.0, every_s: float = 4.0) -> None:
        self._nc = nc
        self._seg = bytes([0x7F]) * int(seg_s * 8000)  # near-silent but not the silence byte
        self._every = every_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self.frames_published = 0

    async def start(self) -> None:
        await self._nc.subscribe(subjects.ALL_CONTROL, cb=self._on_control)

    async def _on_control(self, msg: Any) -> None:
        if b'"call_started"' in msg.data and not self._stopping:
            started = CallStarted.model_validate_json(msg.data)
            self._tasks[started.call_sid] = asyncio.create_task(self._speak(started.call_sid))
        elif b'"call_ended"' in msg.data:
            sid = subjects.call_sid_of(msg.subject)
            task = self._tasks.pop(sid, None)
            if task is not None:
                task.cancel()

    async def _speak(self, sid: str) -> None:
        turn = 0
        chunk_bytes = 800
        while not self._stopping:
            turn += 1
            seg = ReplySegment(call_sid=sid, turn=turn, seq=0, text="Bench audio.", last=True)
            await self._nc.publish(subjects.reply(sid), seg.to_bytes())
            chunks = [self._seg[i : i + chunk_bytes] for i in range(0, len(self._seg), chunk_bytes)]
            for i, data in enumerate(chunks):
                hdrs = {H.TURN: str(turn), H.SEG: "0", H.CHUNK: str(i)}
                await self._nc.publish(subjects.audio_out(sid), data, headers=hdrs)
            hdrs = {H.TURN: str(turn), H.SEG: "0", H.CHUNK: str(len(chunks)), H.LAST: "1"}
            await self._nc.publish(subjects.audio_out(sid), b"", headers=hdrs)
            self.frames_published += len(self._seg) // FRAME_BYTES
            await asyncio.sleep(self._every)

    def stop(self) -> None:
        self._stopping = True


async def gateway_capacity(
    *, calls: int = 200, seconds: float = 20.0, out: Output = print, logs: Output | None = None
) -> GatewayResult:
    """One gateway, ``calls`` simulated Twilio calls streaming for ``seconds``."""
    import nats

    from benchmarks.load import LightCall, pacing_gaps_ms
    from devkit.simulator import new_sid
    from voiceagent.stack import gateway_healthy, service_specs

    res = GatewayResult(calls=calls)
    port = _free_port()
    metrics_port = _free_port()
    token = os.urandom(16).hex()
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp:
        nats_proc, url = await _private_nats(tmp)
        env = {
            "NATS_URL": url,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TWILIO_AUTH_TOKEN": token,
            "MAX_CALLS": str(calls + 10),
            "VOICE_RATE_PER_MIN": "0",  # every simulated call comes from one IP
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
            "REDIS_URL": "",
            "ASR_PROVIDER": "null",
            "ASR_MAX_CALLS": str(calls + 10),
        }
        specs = [
            s
            for s in service_specs(asr=1, agent=0, tts=0, env={**env})
            if s.name in ("gateway", "asr-1")
        ]
        specs = [
            ProcessSpec(
                name=s.name,
                argv=s.argv,
                env={**s.env, "METRICS_PORT": str(metrics_port if s.name == "asr-1" else 0)},
            )
            for s in specs
        ]
        sup = Supervisor(specs=[nats_proc, *specs], output=logs, events=logs)
        await sup.start()
        nc = None
        try:
            await _wait_port(url)
            gw = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while not await gateway_healthy(gw):
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not become healthy")
                await asyncio.sleep(0.2)
            await _wait_port(f"nats://127.0.0.1:{metrics_port}", 30.0)
            nc = await nats.connect(url, name="bench-tts")
            tts = FakeTts(nc)
            await tts.start()
            pids = sup.pids()
            gw_pid = pids["gateway"]
            assert gw_pid is not None
            res.rss_before_mib = rss_mib(gw_pid)
            mpage = f"http://127.0.0.1:{metrics_port}/metrics"
            before = await scrape(mpage)
            limits = httpx.Limits(max_connections=calls, max_keepalive_connections=calls)
            async with httpx.AsyncClient(timeout=30.0, trust_env=False, limits=limits) as client:
                lcs = [
                    LightCall(
                        client=client,
                        gateway_url=gw,
                        public_url=gw,
                        auth_token=token,
                        account_sid=new_sid("AC"),
                        utterance=b"",
                        stream_s=seconds,
                    )
                    for _ in range(calls)
                ]
                meter = CpuMeter({"gateway": gw_pid, "bench": os.getpid()})
                t0 = time.monotonic()

                async def staggered(i: int, lc: LightCall) -> Any:
                    await asyncio.sleep(2.0 * i / calls)
                    return await lc.run()

                out(f"    {calls} calls streaming for {seconds:.0f} s ...")
                tasks = [asyncio.create_task(staggered(i, c)) for i, c in enumerate(lcs)]
                await asyncio.sleep(3.0)  # all calls up: measure the steady state
                meter.start()
                await asyncio.sleep(max(0.0, seconds - 6.0))
                cpu = meter.stop()
                tts.stop()  # what is queued still plays before the calls end
                stats = await asyncio.gather(*tasks)
                res.seconds = time.monotonic() - t0
            res.rss_peak_mib = rss_mib(gw_pid)
            res.gateway_cpu = cpu.get("gateway", 0.0)
            res.bench_cpu = cpu.get("bench", 0.0)
            await asyncio.sleep(1.0)
            after = await scrape(mpage)
            res.frames_at_asr = metric(
                after, "voice_frames_total", service="asr", direction="in"
            ) - metric(before, "voice_frames_total", service="asr", direction="in")
            jitter: list[float] = []
            late: list[float] = []
            for st in stats:
                res.frames_sent += st.frames_sent
                res.out_received += st.media_received
                jitter += pacing_gaps_ms(st.arrivals, lead_frames=10)
                late += st.clock_late_ms
                if not st.ok:
                    res.calls_failed += 1
                    res.failures.append(st.why)
            res.out_published = tts.frames_published
            res.jitter_p99 = percentile(jitter, 99)
            res.caller_late_ms_p99 = percentile(late, 99)
            await asyncio.sleep(2.0)
            res.rss_after_mib = rss_mib(gw_pid)
        finally:
            if nc is not None:
                await nc.close()
            await sup.stop()
    return res


__all__ = [
    "FakeTts",
    "GatewayResult",
    "IntakeResult",
    "RawPublisher",
    "asr_intake",
    "gateway_capacity",
    "metric",
    "parse_metrics",
    "proc_ticks",
]
