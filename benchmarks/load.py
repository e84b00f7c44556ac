"""``voiceagent bench``: capacity and latency of the whole stack, measured over the real protocols.

It starts the stack (:class:`~voiceagent.stack.Stack`, several replicas per stage) on a private
nats-server, then for N = 1, 10, 50, 100, 200, ... places N concurrent simulated Twilio calls
(:class:`LightCall`: signed webhook, WebSocket, 20 ms ``media`` frames on a real-time clock,
marks echoed as Twilio's playback buffer would) and prints one row per N:

- CPU per service (% of one core, from ``/proc``), summed over replicas;
- frame-in -> bus latency p50/p99: from the simulated Twilio sending a ``media`` frame to the
  frame arriving on ``voice.<call>.audio.in.<worker>`` (the bench subscribes to it);
- outbound pacing jitter p99: ``|gap - 20 ms|`` between consecutive ``media`` frames the
  gateway sends once its lead is built;
- voice-to-voice p50/p95 (end of caller speech -> first reply audio at the caller), split into
  endpointing, ASR, agent first sentence, TTS first audio (from the stages' Events on
  ``voice.<call>.events``) and our own overhead (the rest);
- frames lost (sent by the callers, never seen on the bus) and calls failed.

Two provider modes: ``embedded`` (local whisper, piper, demo agent) and ``instant`` (the cloud
fakes with instant answers, :mod:`benchmarks.instant_fakes`), which isolates our overhead.
The run stops at the first N that misses a target, or at ``--max-calls``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import websockets

from devkit.simulator import (
    PlaybackBuffer,
    StreamTarget,
    last_speech_frame,
    local_stream_url,
    new_sid,
    parse_twiml,
    twilio_signature,
)
from shared import headers as H
from shared import subjects
from shared.audio import FRAME_BYTES, FRAME_MS, MULAW_SILENCE, frames
from shared.messages import parse_event

Mode = Literal["instant", "embedded"]
Output = Callable[[str], None]

FRAME_S = FRAME_MS / 1000
DEFAULT_STEPS = (1, 10, 50, 100, 200, 300, 500, 1000)
UTTERANCE = "What are your opening hours?"

# Targets a row must meet (see docs/performance.md).
MAX_IN_BUS_P99_MS = 50.0
MAX_JITTER_P99_MS = 20.0
MAX_OVERHEAD_P50_MS = 15.0  # instant mode only: our own share of voice-to-voice
MAX_V2V_GROWTH = 2.0  # embedded: p95 voice-to-voice may grow to this times the N=1 figure


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; ``None`` when empty."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def pacing_gaps_ms(
    arrivals: Sequence[float], *, lead_frames: int, run_gap_s: float = 0.1
) -> list[float]:
    """``|gap - 20 ms|`` between outbound frames, after each run's lead burst (ms).

    A run is frames less than ``run_gap_s`` apart; its first ``lead_frames`` frames are sent
    at once on purpose (the playback lead), so only the paced frames after them count.
    """
    out: list[float] = []
    in_run = 0
    for prev, cur in itertools.pairwise(arrivals):
        gap = cur - prev
        if gap > run_gap_s:
            in_run = 0
            continue
        in_run += 1
        if in_run > lead_frames:
            out.append(abs(gap - FRAME_S) * 1000.0)
    return out


def cpu_percent(ticks: float, seconds: float, *, hz: int | None = None) -> float:
    """CPU ``ticks`` used over ``seconds`` of wall time, as % of one core."""
    hz = hz or os.sysconf("SC_CLK_TCK")
    if seconds <= 0:
        return 0.0
    return 100.0 * ticks / hz / seconds


def proc_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (``None`` if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def service_of(name: str) -> str:
    """``asr-2`` -> ``asr``: replicas are summed under their service."""
    return name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name


class CpuMeter:
    """CPU of named processes between :meth:`start` and :meth:`stop`, summed per service."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = {n: p for n, p in pids.items() if p}
        self._t0 = 0.0
        self._start: dict[str, int] = {}
        self.percent: dict[str, float] = {}
        self.cpu_ms: dict[str, float] = {}  # CPU time over the step, per service

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {n: proc_ticks(p) or 0 for n, p in self._pids.items()}

    def stop(self) -> dict[str, float]:
        seconds = time.monotonic() - self._t0
        out: dict[str, float] = {}
        for name, pid in self._pids.items():
            now = proc_ticks(pid)
            if now is None:
                continue
            svc = service_of(name)
            out[svc] = out.get(svc, 0.0) + cpu_percent(now - self._start[name], seconds)
            ms = (now - self._start[name]) * 1000.0 / os.sysconf("SC_CLK_TCK")
            self.cpu_ms[svc] = self.cpu_ms.get(svc, 0.0) + ms
        self.percent = out
        return out


# ---------------------------------------------------------------- one row


@dataclass
class Row:
    """What one step (N concurrent calls in one mode) measured."""

    mode: str
    calls: int
    cpu: dict[str, float] = field(default_factory=dict)
    in_bus_p50: float | None = None
    in_bus_p99: float | None = None
    jitter_p99: float | None = None
    v2v_p50: float | None = None
    v2v_p95: float | None = None
    endpointing_p50: float | None = None
    asr_p50: float | None = None
    agent_p50: float | None = None
    tts_p50: float | None = None
    overhead_p50: float | None = None
    overhead_p95: float | None = None
    frames_sent: int = 0
    frames_lost: int = 0
    calls_failed: int = 0
    failures: list[str] = field(default_factory=list)
    claim_ms_p50: float | None = None  # gateway: ASR claim answered (from asr.claimed Events)
    asr_lost: int = 0  # gateway: ASR heartbeats missed, call claimed again (asr.lost Events)
    in_gateway_p50: float | None = None  # caller send -> gateway's Va-Sent stamp (socket + ours)
    in_gateway_p99: float | None = None
    label: str = ""  # which variant of an A/B run (``voiceagent bench --ab``)
    utterances: int = 0  # finals the ASR workers published (each one decode or more)
    asr_cpu_ms: float | None = None  # ASR workers' CPU time over the step per utterance
    asr_claims: dict[str, int] = field(default_factory=dict)  # calls each ASR worker took


COLUMNS: tuple[tuple[str, str], ...] = (
    ("calls", "N"),
    ("cpu:gateway", "gw%"),
    ("cpu:asr", "asr%"),
    ("cpu:agent", "agent%"),
    ("cpu:tts", "tts%"),
    ("cpu:nats", "nats%"),
    ("cpu:fakes", "fakes%"),
    ("cpu:bench", "bench%"),
    ("in_bus_p50", "in>bus p50"),
    ("in_bus_p99", "p99"),
    ("jitter_p99", "jitter p99"),
    ("v2v_p50", "v2v p50"),
    ("v2v_p95", "p95"),
    ("endpointing_p50", "endpt"),
    ("asr_p50", "asr"),
    ("asr_cpu_ms", "asr cpu/utt"),
    ("agent_p50", "agent"),
    ("tts_p50", "tts"),
    ("overhead_p50", "ours p50"),
    ("overhead_p95", "p95"),
    ("frames_lost", "lost"),
    ("calls_failed", "failed"),
)


def _cell(row: Row, key: str) -> str:
    if key.startswith("cpu:"):
        v: Any = row.cpu.get(key[4:])
        return "-" if v is None else f"{v:.0f}"
    v = getattr(row, key)
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def format_table(rows: Sequence[Row]) -> str:
    """The result table (times in ms, CPU in % of one core), one line per row."""
    header = [h for _, h in COLUMNS]
    cells = [[_cell(r, k) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cs, widths, strict=True)) for cs in cells]
    return "\n".join(lines)


def broke(row: Row) -> bool:
    """Calls failed or frames were lost: larger N would only fail more."""
    return bool(row.calls_failed or row.frames_lost)


def missed_targets(row: Row, *, baseline_v2v_p95: float | None = None) -> list[str]:
    """Which targets ``row`` misses (empty: it meets them all)."""
    missed: list[str] = []
    if row.calls_failed:
        missed.append(f"{row.calls_failed} calls failed")
    if row.frames_lost:
        missed.append(f"{row.frames_lost} frames lost")
    if row.in_bus_p99 is not None and row.in_bus_p99 > MAX_IN_BUS_P99_MS:
        missed.append(f"frame-in->bus p99 {row.in_bus_p99:.0f} ms > {MAX_IN_BUS_P99_MS:.0f}")
    if row.jitter_p99 is not None and row.jitter_p99 > MAX_JITTER_P99_MS:
        missed.append(f"pacing jitter p99 {row.jitter_p99:.0f} ms > {MAX_JITTER_P99_MS:.0f}")
    if row.mode == "instant" and row.overhead_p50 is not None:
        if row.overhead_p50 > MAX_OVERHEAD_P50_MS:
            missed.append(f"our overhead p50 {row.overhead_p50:.1f} ms > {MAX_OVERHEAD_P50_MS:.0f}")
    if row.v2v_p50 is None and row.calls:
        missed.append("no voice-to-voice sample")
    if (
        row.mode == "embedded"
        and baseline_v2v_p95
        and row.v2v_p95 is not None
        and row.v2v_p95 > MAX_V2V_GROWTH * baseline_v2v_p95
    ):
        missed.append(
            f"voice-to-voice p95 {row.v2v_p95:.0f} ms > {MAX_V2V_GROWTH:.0f}x N=1 "
            f"({baseline_v2v_p95:.0f} ms)"
        )
    return missed


# ---------------------------------------------------------------- the simulated caller


@dataclass
class CallStats:
    """What one :class:`LightCall` observed."""

    call_sid: str
    ok: bool = False
    why: str = ""
    frames_sent: int = 0
    media_received: int = 0
    speech_end_at: list[float] = field(default_factory=list)  # wall clock, per caller turn
    reply_at: list[float] = field(default_factory=list)  # wall clock: first reply frame after it
    sent_at: dict[int, float] = field(default_factory=dict)  # Twilio chunk -> wall clock sent
    arrivals: list[float] = field(default_factory=list)  # monotonic: outbound media frames
    clock_late_ms: list[float] = field(default_factory=list)  # our own 20 ms ticks, late by

    @property
    def v2v_ms(self) -> list[float]:
        """Per answered caller turn: end of speech -> first reply audio (ms)."""
        return [(r - e) * 1000.0 for e, r in zip(self.speech_end_at, self.reply_at, strict=False)]


class LightCall:
    """A lean Twilio call for load: greeting, one caller sentence, its reply, hang up.

    Speaks the same protocol as :class:`~devkit.simulator.SimulatedCall` (signed webhook
    and upgrade, ``connected``/``start``/``media``/``mark``/``stop``), without its bus
    listener and printouts, so one process can drive hundreds of calls.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        gateway_url: str,
        public_url: str,
        auth_token: str,
        account_sid: str,
        utterance: bytes,
        greeting_timeout_s: float = 30.0,
        reply_timeout_s: float = 30.0,
        quiet_s: float = 0.6,
        hold_reply_s: float = 2.0,
        stream_s: float | None = None,
        turns: int = 2,
    ) -> None:
        self._client = client
        self._gateway = gateway_url.rstrip("/")
        self._public = public_url.rstrip("/")
        self._token = auth_token
        self._account = account_sid
        self._frames = [f.ljust(FRAME_BYTES, bytes([MULAW_SILENCE])) for f in frames(utterance)]
        self._speech_end = max(last_speech_frame(utterance), 0)
        self._greeting_timeout = greeting_timeout_s
        self._reply_timeout = reply_timeout_s
        self._quiet = quiet_s
        self._hold_reply_s = hold_reply_s
        self._stream_s = stream_s
        self._turns = turns
        self.stats = CallStats(call_sid=new_sid("CA"))
        self._stream_sid = ""
        self._ws: Any = None
        self._buffer = PlaybackBuffer()
        self._last_media = 0.0
        self._speaking: int | None = None  # index of the next utterance frame to send
        self._chunk = 0
        self._seq = 0
        self._ended = asyncio.Event()
        self._replied = asyncio.Event()
        self._silence = base64.b64encode(bytes([MULAW_SILENCE]) * FRAME_BYTES).decode()
        self._speech_payloads = [base64.b64encode(f).decode() for f in self._frames]

    async def _post_voice(self) -> StreamTarget:
        sid = self.stats.call_sid
        params = {
            "AccountSid": self._account,
            "ApiVersion": "2010-04-01",
            "CallSid": sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": "+15555550100",
            "To": "+15555550199",
        }
        url = self._public + "/voice"
        headers = {"X-Twilio-Signature": twilio_signature(url, params, self._token)}
        resp = await self._client.post(self._gateway + "/voice", data=params, headers=headers)
        if resp.status_code != 200:
            raise RuntimeError(f"POST /voice answered {resp.status_code}")
        return parse_twiml(resp.text)

    async def _send(self, msg: dict[str, Any]) -> None:
        self._seq += 1
        msg["sequenceNumber"] = str(self._seq)
        try:
            await self._ws.send(json.dumps(msg))
        except websockets.ConnectionClosed:
            self._ended.set()

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        st = self.stats
        while not self._ended.is_set():
            k += 1
            delay = t0 + k * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001:
                st.clock_late_ms.append(-delay * 1000.0)
            payload = self._silence
            if self._speaking is not None:
                payload = self._speech_payloads[self._speaking]
                if self._speaking == self._speech_end:
                    st.speech_end_at.append(time.time())
                self._speaking += 1
                if self._speaking >= len(self._speech_payloads):
                    self._speaking = None
            self._chunk += 1
            st.sent_at[self._chunk] = time.time()
            st.frames_sent += 1
            await self._send(
                {
                    "event": "media",
                    "streamSid": self._stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._chunk),
                        "timestamp": str((self._chunk - 1) * FRAME_MS),
                        "payload": payload,
                    },
                }
            )
            _, due = self._buffer.play(FRAME_BYTES)
            for name in due:
                await self._send(
                    {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": name}}
                )

    async def _receive(self) -> None:
        st = self.stats
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                kind = msg.get("event")
                if kind == "media":
                    now = time.monotonic()
                    st.media_received += 1
                    st.arrivals.append(now)
                    self._last_media = now
                    if len(st.reply_at) < len(st.speech_end_at):
                        st.reply_at.append(time.time())
                        self._replied.set()
                    self._buffer.add_audio(base64.b64decode(msg["media"]["payload"]))
                elif kind == "mark":
                    for name in self._buffer.add_mark(msg["mark"]["name"]):
                        await self._send(
                            {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": name}}
                        )
                elif kind == "clear":
                    for name in self._buffer.clear():
                        await self._send(
                            {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": name}}
                        )
        except websockets.ConnectionClosed:
            pass
        self._ended.set()

    async def _wait_quiet(self, timeout_s: float, *, need_audio: bool) -> bool:
        """Wait for reply audio to start (if ``need_audio``), then to stop playing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        start_count = self.stats.media_received
        while loop.time() < deadline and not self._ended.is_set():
            heard = self.stats.media_received > start_count or not need_audio
            idle = time.monotonic() - self._last_media >= self._quiet
            if heard and idle and self._buffer.idle:
                return True
            await asyncio.sleep(0.05)
        return False

    async def _stream_only(self, seconds: float) -> CallStats:
        """Streaming mode: send audio for ``seconds``, let queued reply audio play, stop."""
        st = self.stats
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), seconds)
        if self._ended.is_set():
            st.why = "the gateway ended the call"
            return st
        await self._wait_quiet(10.0, need_audio=False)
        await self._send(
            {
                "event": "stop",
                "streamSid": self._stream_sid,
                "stop": {"accountSid": self._account, "callSid": st.call_sid},
            }
        )
        st.ok = True
        return st

    async def _first_of(self, event: asyncio.Event, *, timeout_s: float) -> None:
        """Wait for ``event``, the end of the call, or ``timeout_s``."""
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._ended.wait())}
        _, pending = await asyncio.wait(waits, timeout=timeout_s, return_when="FIRST_COMPLETED")
        for w in pending:
            w.cancel()

    async def run(self) -> CallStats:
        """Place the call; never raises for the call's own failures (see ``stats.why``)."""
        st = self.stats
        tasks: list[asyncio.Task[None]] = []
        try:
            target = await self._post_voice()
            headers = {"X-Twilio-Signature": twilio_signature(target.url, {}, self._token)}
            self._ws = await websockets.connect(
                local_stream_url(target.url, self._gateway),
                additional_headers=headers,
                compression=None,
                proxy=None,
                open_timeout=20,
                max_size=2**20,
            )
            self._stream_sid = new_sid("MZ")
            await self._ws.send(
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            )
            await self._send(
                {
                    "event": "start",
                    "streamSid": self._stream_sid,
                    "start": {
                        "accountSid": self._account,
                        "streamSid": self._stream_sid,
                        "callSid": st.call_sid,
                        "tracks": ["inbound"],
                        "customParameters": dict(target.parameters),
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "channels": 1,
                        },
                    },
                }
            )
            self._last_media = time.monotonic()
            tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._clock())]
            if self._stream_s is not None:
                return await self._stream_only(self._stream_s)
            if not await self._wait_quiet(self._greeting_timeout, need_audio=True):
                st.why = "call ended" if self._ended.is_set() else "no greeting"
                return st
            for turn in range(self._turns):
                self._replied.clear()
                self._speaking = 0
                await self._first_of(self._replied, timeout_s=self._reply_timeout + 10.0)
                if len(st.reply_at) <= turn:
                    st.why = "call ended" if self._ended.is_set() else "no reply"
                    return st
                if turn + 1 < self._turns:  # let the reply finish: speaking over it barges in
                    await self._wait_quiet(self._reply_timeout, need_audio=False)
            # Enough of the last reply to measure its pacing; the rest adds nothing but time.
            await self._wait_quiet(self._hold_reply_s, need_audio=False)
            await self._send(
                {
                    "event": "stop",
                    "streamSid": self._stream_sid,
                    "stop": {"accountSid": self._account, "callSid": st.call_sid},
                }
            )
            st.ok = True
            return st
        except Exception as e:
            st.why = f"{type(e).__name__}: {e}"[:120]
            return st
        finally:
            self._ended.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._ws is not None:
                with contextlib.suppress(Exception):
                    await self._ws.close()


# ---------------------------------------------------------------- bus observer


class BusObserver:
    """Watches ``voice.*.audio.in.*`` (frame latency, frames seen) and ``voice.*.events``."""

    def __init__(self) -> None:
        self.calls: dict[str, CallStats] = {}
        self.in_bus_ms: list[float] = []
        self.in_gateway_ms: list[float] = []
        self.seen: dict[str, set[int]] = {}
        self.events: dict[str, list[Any]] = {}
        self._subs: list[Any] = []

    async def start(self, nc: Any) -> None:
        self._subs = [
            await nc.subscribe(subjects.ALL_AUDIO_IN, cb=self._on_audio, pending_msgs_limit=-1),
            await nc.subscribe(subjects.ALL_EVENTS, cb=self._on_event, pending_msgs_limit=-1),
        ]
        await nc.flush()

    async def stop(self) -> None:
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()

    async def _on_audio(self, msg: Any) -> None:
        now = time.time()
        sid = msg.subject.split(".", 2)[1]
        st = self.calls.get(sid)
        if st is None:
            return
        try:
            chunk = int((msg.headers or {})[H.SEQ])
        except (KeyError, ValueError):
            return
        seen = self.seen.setdefault(sid, set())
        if chunk in seen:
            return  # re-sent after a re-claim
        seen.add(chunk)
        sent = st.sent_at.get(chunk)
        if sent is not None:
            self.in_bus_ms.append((now - sent) * 1000.0)
            try:  # the gateway's own stamp splits the trip: socket + gateway, then bus
                stamped = int((msg.headers or {})[H.SENT_NS]) / 1e9
            except (KeyError, ValueError):
                return
            self.in_gateway_ms.append((stamped - sent) * 1000.0)

    async def _on_event(self, msg: Any) -> None:
        sid = msg.subject.split(".", 2)[1]
        if sid not in self.calls:
            return
        try:
            self.events.setdefault(sid, []).append(parse_event(msg.data))
        except ValueError:
            return


@dataclass
class Split:
    """One turn's voice-to-voice latency split into stages (ms)."""

    v2v: float
    endpointing: float | None
    asr: float | None
    agent: float | None
    tts: float | None

    @property
    def overhead(self) -> float | None:
        parts = (self.endpointing, self.asr, self.agent, self.tts)
        if any(p is None for p in parts):
            return None
        return self.v2v - sum(p for p in parts if p is not None)


def _per_turn(events: Iterable[Any], name: str, key: str) -> list[float]:
    """``key`` of the first ``name`` Event of each turn that answers caller speech, in order."""
    seen: set[int | None] = set()
    out: list[float] = []
    for ev in events:
        if ev.name != name or "since_speech_end_ms" not in ev.data or ev.turn in seen:
            continue
        seen.add(ev.turn)
        v = ev.data.get(key)
        if isinstance(v, int | float):
            out.append(float(v))
    return out


def split_turns(stats: CallStats, events: Sequence[Any]) -> list[Split]:
    """Each caller turn: measured voice-to-voice and the stages' own timings from Events.

    The k-th caller sentence is matched with the k-th non-empty ``asr.final`` and the k-th
    agent turn that answered speech (greetings carry no ``since_speech_end_ms``).
    """
    finals = [e for e in events if e.name == "asr.final" and not e.data.get("empty")]

    def nth(xs: Sequence[float], k: int) -> float | None:
        return xs[k] if k < len(xs) else None

    ep = [float(v) for e in finals if isinstance(v := e.data.get("endpointing_ms"), int | float)]
    asr = [float(v) for e in finals if isinstance(v := e.data.get("asr_ms"), int | float)]
    agent = _per_turn(events, "agent.first_sentence", "ms")
    tts = _per_turn(events, "tts.first_audio", "ms")
    return [
        Split(v2v=v, endpointing=nth(ep, k), asr=nth(asr, k), agent=nth(agent, k), tts=nth(tts, k))
        for k, v in enumerate(stats.v2v_ms)
    ]


def build_row(
    *,
    mode: str,
    calls: Sequence[CallStats],
    observer: BusObserver,
    cpu: dict[str, float],
    lead_frames: int,
    cpu_ms: dict[str, float] | None = None,
) -> Row:
    """Aggregate one step's calls into a :class:`Row`."""
    row = Row(mode=mode, calls=len(calls), cpu=cpu)
    row.utterances = sum(
        1
        for st in calls
        for ev in observer.events.get(st.call_sid, [])
        if ev.name == "asr.final" and ev.service == "asr"
    )
    if cpu_ms and "asr" in cpu_ms and row.utterances:
        row.asr_cpu_ms = cpu_ms["asr"] / row.utterances
    jitter: list[float] = []
    splits: list[Split] = []
    for st in calls:
        row.frames_sent += st.frames_sent
        seen = observer.seen.get(st.call_sid, set())
        # Frames the call sent after the gateway hung up cannot reach the bus: count sent ones.
        row.frames_lost += sum(1 for c in st.sent_at if c not in seen) if st.ok else 0
        if not st.ok:
            row.calls_failed += 1
            row.failures.append(st.why or "failed")
        jitter += pacing_gaps_ms(st.arrivals, lead_frames=lead_frames)
        splits += split_turns(st, observer.events.get(st.call_sid, []))
    claims: list[float] = []
    for evs in observer.events.values():
        for ev in evs:
            if ev.service == "gateway" and ev.name == "asr.claimed":
                if isinstance(ms := ev.data.get("ms"), int | float):
                    claims.append(float(ms))
            elif ev.service == "gateway" and ev.name == "asr.lost":
                row.asr_lost += 1
            elif ev.service == "asr" and ev.name == "asr.claimed":
                if isinstance(wid := ev.data.get("worker_id"), str):
                    row.asr_claims[wid] = row.asr_claims.get(wid, 0) + 1
    row.claim_ms_p50 = percentile(claims, 50)
    row.in_gateway_p50 = percentile(observer.in_gateway_ms, 50)
    row.in_gateway_p99 = percentile(observer.in_gateway_ms, 99)
    row.in_bus_p50 = percentile(observer.in_bus_ms, 50)
    row.in_bus_p99 = percentile(observer.in_bus_ms, 99)
    row.jitter_p99 = percentile(jitter, 99)

    def pick(attr: str) -> list[float]:
        return [v for s in splits if (v := getattr(s, attr)) is not None]

    row.v2v_p50 = percentile(pick("v2v"), 50)
    row.v2v_p95 = percentile(pick("v2v"), 95)
    row.endpointing_p50 = percentile(pick("endpointing"), 50)
    row.asr_p50 = percentile(pick("asr"), 50)
    row.agent_p50 = percentile(pick("agent"), 50)
    row.tts_p50 = percentile(pick("tts"), 50)
    row.overhead_p50 = percentile(pick("overhead"), 50)
    row.overhead_p95 = percentile(pick("overhead"), 95)
    return row


# ---------------------------------------------------------------- the run


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What ``voiceagent bench`` was asked for."""

    mode: Mode = "instant"
    steps: tuple[int, ...] = DEFAULT_STEPS
    max_calls: int = 200
    asr: int = 2
    agent: int = 2
    tts: int = 2
    ramp_s: float = 2.0  # calls of a step start spread over this
    timeout_s: float = 240.0  # stack readiness
    keep_going: bool = False  # run every step even after one broke
    soak_waves: int = 0  # after the steps: waves of soak_calls calls, memory sampled after each
    soak_calls: int = 20
    verbose: bool = False  # print the services' logs
    env: Mapping[str, str] = field(default_factory=dict)  # more settings for every service
    label: str = ""  # names this variant in the rows (A/B runs)


def steps_for(opts: BenchOptions) -> list[int]:
    """The N to run: the configured steps up to ``max_calls`` (which is always included)."""
    out = [n for n in opts.steps if n <= opts.max_calls]
    if not out or out[-1] != opts.max_calls:
        out.append(opts.max_calls)
    return sorted(set(out))


async def caller_audio(text: str = UTTERANCE) -> bytes:
    """The caller's sentence as 8 kHz mu-law (synthesized once, reused by every call)."""
    from devkit import voices

    return await asyncio.to_thread(voices.synthesize, text)


async def _start_fakes() -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.instant_fakes",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line:
        raise RuntimeError("the cloud fakes did not start")
    return proc, json.loads(line)


async def _stop_fakes(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def run_step(
    *,
    n: int,
    mode: str,
    info: Any,
    pids: dict[str, int | None],
    nc: Any,
    utterance: bytes,
    ramp_s: float,
    lead_frames: int,
    progress: Output,
) -> Row:
    """N concurrent calls against a running stack; returns their row."""
    observer = BusObserver()
    await observer.start(nc)
    limits = httpx.Limits(max_connections=max(10, n), max_keepalive_connections=max(10, n))
    try:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False, limits=limits) as client:
            calls = [
                LightCall(
                    client=client,
                    gateway_url=info.gateway_url,
                    public_url=info.public_url,
                    auth_token=info.auth_token,
                    account_sid=info.account_sid,
                    utterance=utterance,
                )
                for _ in range(n)
            ]
            for c in calls:
                observer.calls[c.stats.call_sid] = c.stats
            meter = CpuMeter({**pids, "bench": os.getpid()})
            meter.start()

            async def staggered(i: int, call: LightCall) -> CallStats:
                await asyncio.sleep(ramp_s * i / max(n, 1))
                return await call.run()

            tasks = [asyncio.create_task(staggered(i, c)) for i, c in enumerate(calls)]
            t0 = time.monotonic()
            while True:
                done, _ = await asyncio.wait(tasks, timeout=5.0)
                if len(done) == len(tasks):
                    break
                progress(f"    ... {len(done)}/{n} calls done after {time.monotonic() - t0:.0f} s")
            cpu = meter.stop()
            results = [t.result() for t in tasks]
        await asyncio.sleep(0.3)  # the last frames and events reach the observer
    finally:
        await observer.stop()
    return build_row(
        mode=mode,
        calls=results,
        observer=observer,
        cpu=cpu,
        lead_frames=lead_frames,
        cpu_ms=meter.cpu_ms,
    )


async def run_bench(opts: BenchOptions, *, out: Output = print) -> list[Row]:
    """Start the stack in ``opts.mode``, run every step, print the table; returns the rows."""
    import nats

    from shared.settings import Settings
    from voiceagent.ports import free_port
    from voiceagent.stack import Stack

    port = free_port()
    env = {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # private: nothing else on it
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "HOST": "127.0.0.1",
        "MAX_CALLS": str(max(opts.max_calls, 200)),
        "VOICE_RATE_PER_MIN": "0",  # every simulated call comes from one IP
        "LOG_LEVEL": "WARNING",
    }
    fakes: asyncio.subprocess.Process | None = None
    rows: list[Row] = []
    lead_frames = max(1, Settings().playback_lead_ms // FRAME_MS)
    stack: Stack | None = None
    try:
        if opts.mode == "instant":
            from benchmarks.instant_fakes import fake_env

            fakes, urls = await _start_fakes()
            env.update(fake_env(urls))
        else:
            env["ASR_MAX_CALLS"] = str(max(opts.max_calls, 10))
        env.update(opts.env)
        out(f"bench: preparing the caller's sentence ({UTTERANCE!r})")
        utterance = await caller_audio()
        stack = Stack(
            asr=opts.asr,
            agent=opts.agent,
            tts=opts.tts,
            env=env,
            output=None,
            service_output=out if opts.verbose else None,
        )
        info = await stack.start()
        out(
            f"bench: mode {opts.mode}; stack gateway x1, asr x{opts.asr}, agent x{opts.agent}, "
            f"tts x{opts.tts} on a private nats-server ({info.nats_url}); waiting for readiness"
        )
        await stack.wait_ready(timeout_s=opts.timeout_s, progress=out)
        assert stack.supervisor is not None
        pids: dict[str, int | None] = dict(stack.supervisor.pids())
        if fakes is not None:
            pids["fakes"] = fakes.pid
        nc = await nats.connect(info.nats_url, name="voiceagent-bench")
        baseline: float | None = None
        try:
            for n in steps_for(opts):
                out(f"bench: {n} concurrent call(s) ...")
                row = await run_step(
                    n=n,
                    mode=opts.mode,
                    info=info,
                    pids=pids,
                    nc=nc,
                    utterance=utterance,
                    ramp_s=min(opts.ramp_s, 0.05 * n),
                    lead_frames=lead_frames,
                    progress=out,
                )
                row.label = opts.label
                rows.append(row)
                if baseline is None:
                    baseline = row.v2v_p95
                missed = missed_targets(row, baseline_v2v_p95=baseline)
                out(format_table([row]).splitlines()[1])
                claim = "-" if row.claim_ms_p50 is None else f"{row.claim_ms_p50:.0f} ms"
                gw = (
                    "-"
                    if row.in_gateway_p50 is None
                    else f"{row.in_gateway_p50:.1f} ms (p99 {row.in_gateway_p99 or 0:.1f})"
                )
                out(
                    f"    (frame-in -> gateway stamp p50 {gw}; ASR claim p50 {claim}; "
                    f"ASR workers lost mid-call: {row.asr_lost})"
                )
                if missed:
                    out(f"bench: N={n} misses: {'; '.join(missed)}")
                    reasons = sorted(set(row.failures))[:3]
                    if reasons:
                        out(f"       failed calls: {'; '.join(reasons)}")
                if broke(row) and not opts.keep_going:
                    out(f"bench: N={n} broke (calls failed or frames lost): stopping here")
                    break
            if opts.soak_waves > 0:
                waves = await run_soak(
                    opts,
                    info=info,
                    pids=pids,
                    nc=nc,
                    utterance=utterance,
                    lead_frames=lead_frames,
                    out=out,
                )
                out(format_soak(waves))
        finally:
            await nc.close()
    finally:
        if stack is not None:
            await stack.stop()
        if fakes is not None:
            await _stop_fakes(fakes)
    out("")
    out(summary(rows, mode=opts.mode))
    return rows


# ---------------------------------------------------------------- soak

SOAK_SLACK_MIB = 8.0  # RSS a process may still gain after the first wave (allocator noise)
SOAK_SLACK_FRAC = 0.05
SOAK_SETTLE_S = 2.0  # after a wave, before memory is read: every call released everywhere


@dataclass
class SoakWave:
    """Memory after one wave of calls (all ended), per process (``asr-1``, ``gateway``, ...)."""

    wave: int
    calls: int
    failed: int
    rss_mib: dict[str, float]
    served: dict[str, int] = field(default_factory=dict)  # calls each ASR worker took so far
    asr_lost: int = 0  # calls of the wave re-claimed from a worker that missed heartbeats


async def run_soak(
    opts: BenchOptions,
    *,
    info: Any,
    pids: dict[str, int | None],
    nc: Any,
    utterance: bytes,
    lead_frames: int,
    out: Output,
) -> list[SoakWave]:
    """``opts.soak_waves`` waves of ``opts.soak_calls`` concurrent calls on the running stack,
    each process's memory read after each wave, with the calls each ASR worker served so far."""
    waves: list[SoakWave] = []
    procs = {k: v for k, v in pids.items() if k != "fakes"}
    # An ASR worker's id ends with its pid (shared.service.worker_id): claims to process names.
    asr_of_pid = {str(p): k for k, p in procs.items() if p and service_of(k) == "asr"}
    served = dict.fromkeys(sorted(asr_of_pid.values()), 0)
    for w in range(1, opts.soak_waves + 1):
        out(f"bench: soak wave {w}/{opts.soak_waves}: {opts.soak_calls} calls ...")
        row = await run_step(
            n=opts.soak_calls,
            mode=opts.mode,
            info=info,
            pids=pids,
            nc=nc,
            utterance=utterance,
            ramp_s=min(opts.ramp_s, 0.05 * opts.soak_calls),
            lead_frames=lead_frames,
            progress=out,
        )
        for wid, n in row.asr_claims.items():
            name = asr_of_pid.get(wid.rsplit("-", 1)[-1])
            if name is not None:
                served[name] += n
        await asyncio.sleep(SOAK_SETTLE_S)
        wave = SoakWave(
            w, opts.soak_calls, row.calls_failed, rss_by_process(procs), dict(served), row.asr_lost
        )
        waves.append(wave)
        mem = ", ".join(f"{k} {v:.0f}" for k, v in sorted(wave.rss_mib.items()))
        out(f"    after {w * opts.soak_calls} calls: RSS MiB {mem}; ASR calls served {served}")
    return waves


def soak_baseline(waves: Sequence[SoakWave]) -> int:
    """Index of the wave memory is compared against: the first half of the soak warms pools and
    caches (with several replicas one wave may hardly reach each; whisper's buffers grow to the
    largest batch seen), the second half must not grow."""
    return (len(waves) - 1) // 2


def soak_growth(waves: Sequence[SoakWave]) -> list[str]:
    """Processes whose memory kept growing over the second half of the soak.

    Flat means: after the last wave, at most ``SOAK_SLACK_MIB`` or ``SOAK_SLACK_FRAC`` above
    what it held after the baseline wave (:func:`soak_baseline`; wave 1 of 2, 3 of 5 or 6).
    """
    if len(waves) < 2:
        return []
    first, last = waves[soak_baseline(waves)].rss_mib, waves[-1].rss_mib
    grew = []
    for name, mib in sorted(last.items()):
        base = first.get(name)
        if base is not None and mib - base > max(SOAK_SLACK_MIB, SOAK_SLACK_FRAC * base):
            grew.append(f"{name} +{mib - base:.0f} MiB ({base:.0f} -> {mib:.0f})")
    return grew


def format_soak(waves: Sequence[SoakWave]) -> str:
    """The soak table (RSS per process, calls served so far) and its verdict."""
    procs = sorted({s for w in waves for s in w.rss_mib})
    workers = sorted({s for w in waves for s in w.served})
    cols = " ".join(f"{s + ' MiB':>12}" for s in procs)
    served_cols = "".join(f" {s + ' calls':>11}" for s in workers)
    head = f"{'wave':>4} {'calls':>5} {'so far':>6} {'failed':>6} {'moved':>5}"
    lines = [f"{head} {cols}{served_cols}"]
    total = 0
    for w in waves:
        total += w.calls
        cells = " ".join(f"{w.rss_mib.get(s, float('nan')):>12.0f}" for s in procs)
        served = "".join(f" {w.served.get(s, 0):>11}" for s in workers)
        row = f"{w.wave:>4} {w.calls:>5} {total:>6} {w.failed:>6} {w.asr_lost:>5}"
        lines.append(f"{row} {cells}{served}")
    grew = soak_growth(waves)
    if grew:
        lines.append(f"soak: memory NOT flat over {total} calls: {'; '.join(grew)}")
    else:
        lines.append(
            f"soak: memory flat over {total} calls (every process within "
            f"{SOAK_SLACK_MIB:.0f} MiB / {SOAK_SLACK_FRAC:.0%} of its size after wave "
            f"{waves[soak_baseline(waves)].wave})"
        )
    return "\n".join(lines)


def rss_by_process(pids: dict[str, int | None]) -> dict[str, float]:
    """Resident memory per process (those still running under their pid)."""
    return {name: mib for name, pid in pids.items() if pid and (mib := rss_mib(pid)) is not None}


def capacity_line(rows: Sequence[Row]) -> str:
    """The largest N that met every target, and the first that did not."""
    good: list[int] = []
    bad: Row | None = None
    baseline = rows[0].v2v_p95 if rows else None
    for r in rows:
        missed = missed_targets(r, baseline_v2v_p95=baseline)
        if missed:
            bad = r
            break
        good.append(r.calls)
    if bad is None:
        top = good[-1] if good else 0
        return f"met every target up to N={top} (the largest N tried)"
    last = f"N={good[-1]}" if good else "no N"
    why = "; ".join(missed_targets(bad, baseline_v2v_p95=baseline))
    return f"meets the targets up to {last}; stops meeting them at N={bad.calls} ({why})"


AB_FIELDS = (
    ("v2v_p50", "v2v p50"),
    ("v2v_p95", "v2v p95"),
    ("asr_p50", "ASR ms p50"),
    ("asr_cpu_ms", "ASR CPU-ms/utt"),
)


def ab_table(rows: Sequence[Row], *, before: str, after: str) -> str:
    """Markdown: per N and variant, medians over rounds, then after/before ratios."""

    def med(rs: Sequence[Row], key: str) -> float | None:
        vals = [v for r in rs if (v := getattr(r, key)) is not None]
        return statistics.median(vals) if vals else None

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    head = "| N | variant | rounds | " + " | ".join(h for _, h in AB_FIELDS)
    lines = [head + " | calls answered |", "|" + "---|" * (len(AB_FIELDS) + 4)]
    for n in sorted({r.calls for r in rows}):
        medians: dict[str, dict[str, float | None]] = {}
        for label in (before, after):
            rs = [r for r in rows if r.calls == n and r.label == label]
            if not rs:
                continue
            medians[label] = {k: med(rs, k) for k, _ in AB_FIELDS}
            answered = sum(r.calls - r.calls_failed for r in rs)
            lines.append(
                f"| {n} | {label} | {len(rs)} | "
                + " | ".join(cell(medians[label][k]) for k, _ in AB_FIELDS)
                + f" | {answered}/{sum(r.calls for r in rs)} |"
            )
        if len(medians) == 2:
            ratios = []
            for k, _ in AB_FIELDS:
                a, b = medians[before][k], medians[after][k]
                ratios.append("-" if not a or b is None else f"{b / a:.2f}")
            lines.append(f"| {n} | ratio after/before | | " + " | ".join(ratios) + " | |")
    return "\n".join(lines)


def summary(rows: Sequence[Row], *, mode: str) -> str:
    """The table and the capacity line, as printed at the end of a run."""
    return "\n".join(
        [
            f"mode {mode}: times in ms (p50 unless noted), CPU in % of one core",
            format_table(rows),
            capacity_line(rows),
        ]
    )
