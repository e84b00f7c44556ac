"""The agent worker: caller turns in, reply sentences and call actions out, over NATS.

Subscriptions (every call through one wildcard each):

- ``voice.*.transcript``, queue group ``agent``: a final, non-empty transcript starts a turn.
- ``voice.*.control``, queue group ``agent``: ``CallStarted`` (greeting turn), ``Dtmf`` (a turn,
  or a key of a keypad entry: :mod:`services.agent.digits`), ``Prompt`` (silence / call-limit
  turn: :mod:`services.agent.fixed_prompts`), ``Played`` (history truncation), ``CallEnded`` (shared
  cleanup), ``StageFailed`` (apology).
- ``voice.*.retry.turn``, queue group ``agent``: a final transcript the gateway sent again
  because no reply started; the turn lease (:mod:`services.agent.leases`) makes sure only one
  replica ever answers an utterance (docs/failover.md).
- ``voice.*.control``, plain: ``Interrupt`` cancels the turn if this replica generates it;
  ``CallEnded`` cancels this replica's turns of the call and drops its local state.

A turn: allocate the turn id, load history, stream the provider's output through the sentence
splitter, publish each sentence as a ``ReplySegment``, publish ``Hangup``/``Transfer`` with
``after_turn``, store what was said. Handlers only start tasks, so a slow turn never holds up
other calls' messages.

The last segment: a complete sentence is held back for up to :data:`HOLD_S` to learn whether
more text follows, so the final sentence itself usually carries ``last=True``. When text stops
for longer (a tool call, a slow model) the held sentence goes out with ``last=False`` rather
than waiting (as does pending text that ends like a sentence but still waits for its next
character); if the stream then ends with nothing more to say, an empty ``last`` segment
closes the turn (TTS turns it into an empty last chunk). This bounds the added latency to
:data:`HOLD_S` and never delays a sentence behind a tool call.

Failures: a provider error, no first output within ``PROVIDER_TIMEOUT_S``, a stall of as long
mid-stream, or a turn running past :data:`MAX_TURN_S` end the turn with a short spoken apology.
A newer caller turn for the same call cancels an unfinished older one (its ``Interrupt`` is
published so TTS and the gateway drop it too), across replicas through the ``va:gen`` flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from faststream.nats.subscriber.usecases.core_subscriber import CoreSubscriber
from pydantic import ValidationError

from services.agent.digits import DigitCollector, KeysWhileTalking, caller_input_text
from services.agent.fixed_prompts import prompt_turn
from services.agent.history import History, item_message, spoken_message, user_message
from services.agent.leases import TurnLeases, TurnProgress
from services.agent.providers.base import (
    AgentOutput,
    AgentProvider,
    HangupAction,
    HistoryItem,
    TransferAction,
    TurnInput,
    TurnKind,
    UsageReport,
)
from services.agent.sentences import SentenceSplitter
from services.agent.store import Store
from services.agent.tools import CallTools
from shared import subjects
from shared.asyncapi import contract_app
from shared.backchannel import is_backchannel, parse_backchannels
from shared.bus import audio_client, make_broker
from shared.errors import ProviderError, ProviderTimeout
from shared.logging import kv
from shared.messages import (
    BusMessage,
    CallEnded,
    CallStarted,
    Dtmf,
    Hangup,
    Interrupt,
    Played,
    Prompt,
    ReplySegment,
    SpeechStarted,
    StageFailed,
    Transcript,
    Transfer,
    TurnHeartbeat,
    event,
    parse_control,
    parse_transcript,
)
from shared.metrics import BAD_MESSAGES, PROVIDER_ERRORS, STAGE_LATENCY
from shared.outbound import OutboundContext
from shared.service import Health, run_service, serve_metrics, stop_event, worker_id
from shared.settings import Settings
from shared.telemetry import NO_SPAN, Span, start_span, traceparent_of, with_trace
from shared.usage import Usage, usage_event

log = logging.getLogger(__name__)

SERVICE = "agent"
FALLBACK_TEXT = "Sorry, I'm having trouble right now. Please bear with me and try again."
STAGE_APOLOGY = "Sorry, I'm having trouble hearing you right now. Please bear with me."
HOLD_S = 0.15
MAX_TURN_S = 60.0
SUPERSEDE_WAIT_S = 1.0  # let a cancelled older turn store what it said before reading history
DRAIN_TIMEOUT_S = 30.0
SENTENCE_MAX_CHARS = 120


async def _raw_body(msg: NatsMessage) -> bytes:
    # FastStream would json-decode by content type before our handler could count bad input.
    return msg.body


@dataclass(frozen=True, kw_only=True)
class TurnJob:
    """Why a turn starts: the trigger, and when it was received (latency origin)."""

    call_sid: str
    kind: TurnKind
    text: str = ""
    utterance_id: int | None = None
    speech_ended_at: float | None = None
    say: str | None = None  # fixed words instead of the provider (apologies)
    keys: str = ""  # keys pressed while the caller said ``text``
    received: float = field(default_factory=time.perf_counter)
    traceparent: str | None = None  # trace context of the message that started the turn
    outbound: OutboundContext | None = None  # on the opening turn of a call we placed


@dataclass(eq=False)
class _Active:
    """A turn task of this replica; ``turn`` is known once allocated.

    ``cancellable`` turns false once the reply is complete: an interrupt arriving while the
    turn stores its history and publishes its actions must not cut that bookkeeping short.
    """

    job: TurnJob
    task: asyncio.Task[None] | None = None
    turn: int | None = None
    superseded: bool = False
    cancellable: bool = True
    span: Span = NO_SPAN

    def cancel(self) -> bool:
        """Cancel the turn if it is still producing its reply."""
        if self.task is None or self.task.done() or not self.cancellable:
            return False
        self.task.cancel()
        return True


class _Done:
    """End-of-stream marker on a turn's output queue."""


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


_DONE = _Done()


class ReplyOut:
    """Publishes one turn's sentences as numbered segments and remembers what was said.

    Holds the latest complete sentence back (see module docstring) and builds the history
    entries of the turn in order: spoken text, then any tool items, then more spoken text.
    """

    def __init__(
        self,
        *,
        publish: Callable[[BusMessage], Any],
        job: TurnJob,
        turn: int,
        cacheable: Callable[[str], bool],
        on_first: Callable[[str], Any],
        resume: TurnProgress | None = None,
        record: Callable[[TurnProgress], Awaitable[None]] | None = None,
    ) -> None:
        self._publish = publish
        self._job = job
        self.turn = turn
        self._cacheable = cacheable
        self._on_first = on_first
        self._record = record
        said = list(resume.said) if resume is not None else []
        # Taking over a dead replica's turn: its sentences were published (and heard); the
        # same ones coming again from the provider are not spoken twice.
        self._skip = [_norm(t) for t in said]
        self._said = said
        self.seq = len(said)
        self.held: str | None = None
        self.entries: list[dict[str, Any]] = []
        self._spoken: list[str] = list(said)
        self._spoken_seq0 = 0
        self.last_spoken_seq: int | None = len(said) - 1 if said else None
        self._first_sent = bool(said)
        self.finished = False

    @property
    def published(self) -> int:
        """Segments published so far."""
        return self.seq

    async def sentence(self, text: str) -> None:
        """A complete sentence: publish the held one, hold this one."""
        await self.release()
        self.held = text

    async def release(self) -> None:
        """Publish the held sentence (more text follows, or we stop waiting to know)."""
        if self.held is not None:
            text, self.held = self.held, None
            await self._segment(text, last=False)

    def item(self, message: dict[str, Any]) -> None:
        """A non-spoken history item (call :meth:`release` first to keep the order)."""
        self._close_spoken()
        self.entries.append(item_message(message, turn=self.turn))

    async def finish(self, rest: str = "") -> None:
        """End of the reply: the held sentence and ``rest`` go out, the final one ``last``."""
        tail = [t for t in (self.held, rest.strip()) if t]
        self.held = None
        if not tail:
            tail = [""]  # an empty last segment closes the turn
        for i, text in enumerate(tail):
            await self._segment(text, last=i == len(tail) - 1)
        self.finished = True
        self._close_spoken()

    async def fail(self, apology: str) -> None:
        """The provider failed: what is complete goes out, then the apology as the last one."""
        await self.release()
        await self._segment(apology, last=True, cacheable=True)
        self.finished = True
        self._close_spoken()

    def close(self) -> list[dict[str, Any]]:
        """The turn's history entries (spoken text as published, items)."""
        self._close_spoken()
        return self.entries

    def _close_spoken(self) -> None:
        if self._spoken:
            self.entries.append(
                spoken_message(self._spoken, turn=self.turn, seq0=self._spoken_seq0)
            )
            self._spoken = []

    async def _segment(self, text: str, *, last: bool, cacheable: bool | None = None) -> None:
        if self._skip:
            if _norm(text) == self._skip[0]:
                self._skip.pop(0)
                if not last:
                    return  # the caller heard it from the replica that died
                text = ""  # the turn still needs its last segment
            else:
                self._skip = []  # the new reply went another way: say it from here
        seg = ReplySegment(
            call_sid=self._job.call_sid,
            turn=self.turn,
            seq=self.seq,
            text=text,
            last=last,
            utterance_id=self._job.utterance_id,
            speech_ended_at=self._job.speech_ended_at,
            cacheable=self._cacheable(text) if cacheable is None else cacheable,
        )
        await self._publish(seg)
        if text:
            if not self._spoken:
                self._spoken_seq0 = self.seq
            self._spoken.append(text)
            self.last_spoken_seq = self.seq
            self._said.append(text)
            if self._record is not None:
                await self._record(TurnProgress(turn=self.turn, said=list(self._said)))
        self.seq += 1
        if text and not self._first_sent:
            self._first_sent = True
            await self._on_first(text)


class AgentWorker:
    """Runs turns for every call on the bus. Attach to a broker before starting it."""

    def __init__(
        self,
        *,
        settings: Settings,
        provider: AgentProvider,
        history: History,
        broker: NatsBroker,
        digits: DigitCollector | None = None,
    ) -> None:
        self._settings = settings
        self._provider = provider
        self._history = history
        self._broker = broker
        self._digits = digits if digits is not None else DigitCollector(store=history.store)
        self._held_keys = KeysWhileTalking(store=history.store)
        self._active: dict[str, _Active] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._work_subs: list[CoreSubscriber] = []
        owner = worker_id(settings.service_name or SERVICE)
        self._leases = TurnLeases(store=history.store, owner=owner)
        self._backchannels = parse_backchannels(settings.backchannel_words)

    def attach(self) -> None:
        """Subscribe the handlers (before ``broker.start()``)."""
        transcripts = self._broker.subscriber(
            subjects.ALL_TRANSCRIPT, queue=subjects.QUEUE_AGENT, decoder=_raw_body
        )
        transcripts(self.on_transcript)
        control = self._broker.subscriber(
            subjects.ALL_CONTROL, queue=subjects.QUEUE_AGENT, decoder=_raw_body
        )
        control(self.on_control)
        # The recognizer's failures come on ASR's own subject (it may not publish on control).
        asr_failed = self._broker.subscriber(
            subjects.ALL_ASR_CONTROL, queue=subjects.QUEUE_AGENT, decoder=_raw_body
        )
        asr_failed(self.on_asr_control)
        # The gateway re-sends a final transcript whose turn was lost (docs/failover.md).
        retries = self._broker.subscriber(
            subjects.ALL_RETRY_TURN, queue=subjects.QUEUE_AGENT, decoder=_raw_body
        )
        retries(self.on_transcript)
        self._work_subs = [transcripts, control, asr_failed, retries]
        self._broker.subscriber(subjects.ALL_CONTROL, decoder=_raw_body)(self.on_control_all)

    # ------------------------------------------------------------------ handlers

    async def on_transcript(self, body: bytes, msg: NatsMessage) -> None:
        """A final, non-empty transcript starts a turn; everything else is ignored."""
        try:
            tr = parse_transcript(body)
            _check_subject(tr, msg)
        except (ValidationError, ValueError) as e:
            _bad("transcript", e)
            return
        if isinstance(tr, SpeechStarted):
            # Keys pressed from now until the final join its turn (KeysWhileTalking).
            await self._held_keys.talking(tr.call_sid, tr.utterance_id)
            return
        if not isinstance(tr, Transcript) or not tr.is_final:
            return
        try:
            await self._answer(tr, msg)
        finally:
            await self._held_keys.done_talking(tr.call_sid, tr.utterance_id)

    async def _answer(self, tr: Transcript, msg: NatsMessage) -> None:
        """A final transcript: start its turn, unless it is empty or a backchannel."""
        if not tr.text.strip():
            return
        if is_backchannel(tr.text, self._backchannels) and await self._history.speaking(
            tr.call_sid
        ):
            # "mm-hm" over our own reply acknowledges it; the gateway resumes playback.
            await self._event(tr.call_sid, "agent.backchannel_ignored", None)
            return
        # One replica answers each utterance, also when the gateway sends it again.
        if not await self._leases.acquire(tr.call_sid, tr.utterance_id):
            return
        self._background(self._digits.cancel(tr.call_sid))  # spoke instead of typing
        self.start_turn(
            TurnJob(
                call_sid=tr.call_sid,
                kind="utterance",
                text=tr.text.strip(),
                keys=await self._held_keys.take(tr.call_sid),
                utterance_id=tr.utterance_id,
                speech_ended_at=tr.speech_ended_at,
                traceparent=traceparent_of(msg.headers),
            )
        )

    async def on_control(self, body: bytes, msg: NatsMessage) -> None:
        """Queue-group control: one replica greets, answers keys, updates shared history."""
        try:
            ctl = parse_control(body)
            _check_subject(ctl, msg)
        except (ValidationError, ValueError) as e:
            _bad("control", e)
            return
        sid = ctl.call_sid
        if isinstance(ctl, CallStarted):
            tp = traceparent_of(msg.headers)
            if ctl.outbound is not None:
                await self._history.set_outbound(sid, ctl.outbound)
            job = TurnJob(call_sid=sid, kind="call_started", traceparent=tp, outbound=ctl.outbound)
            self.start_turn(job)
        elif isinstance(ctl, Dtmf):
            self._background(self._on_dtmf(sid, ctl.digit))
        elif isinstance(ctl, Prompt):
            kind, text = prompt_turn(ctl.reason)
            self.start_turn(TurnJob(call_sid=sid, kind=kind, text=text))
        elif isinstance(ctl, Played):
            self._background(
                self._history.heard(sid, turn=ctl.turn, seq=ctl.seq, complete=ctl.complete)
            )
            self._background(
                self._history.record_played(
                    sid,
                    turn=ctl.turn,
                    seq=ctl.seq,
                    heard_text=ctl.heard_text,
                    complete=ctl.complete,
                )
            )
        elif isinstance(ctl, CallEnded):
            self._background(self._history.end_call(sid))
            self._background(self._digits.cancel(sid))
            self._background(self._held_keys.forget(sid))
        elif isinstance(ctl, StageFailed) and ctl.service != "tts":
            # A TTS failure cannot be apologized for out loud; anything else can.
            log.warning("stage failed", **kv(call=sid, stage=ctl.service))
            self.start_turn(TurnJob(call_sid=sid, kind="utterance", say=STAGE_APOLOGY))

    async def on_asr_control(self, body: bytes, msg: NatsMessage) -> None:
        """ASR's subject: only its ``StageFailed`` counts (anything else there is forged)."""
        try:
            ctl = parse_control(body)
            _check_subject(ctl, msg)
            if not isinstance(ctl, StageFailed) or ctl.service != "asr":
                raise ValueError("not an ASR failure")
        except (ValidationError, ValueError) as e:
            _bad("control", e)
            return
        await self.on_control(body, msg)

    async def on_control_all(self, body: bytes, msg: NatsMessage) -> None:
        """Every replica: stop an interrupted turn, forget an ended call."""
        try:
            ctl = parse_control(body)
            _check_subject(ctl, msg)
        except (ValidationError, ValueError):
            return  # counted once, by the queue-group handler
        if isinstance(ctl, Played | Interrupt):
            # Every replica follows the call's turn ids: Redis restarting empty must not make
            # one hand out an id the gateway already played (its audio would be dropped).
            self._history.saw_turn(ctl.call_sid, ctl.turn)
        if isinstance(ctl, Interrupt):
            active = self._active.get(ctl.call_sid)
            if active and active.turn == ctl.turn and active.cancel():
                log.info("turn interrupted", **kv(call=ctl.call_sid, turn=ctl.turn))
        elif isinstance(ctl, CallEnded):
            active = self._active.get(ctl.call_sid)
            if active:
                active.cancel()
            self._history.forget_local(ctl.call_sid)

    async def _on_dtmf(self, sid: str, digit: str) -> None:
        """A key: part of a keypad entry the agent asked for, else a turn of its own."""
        try:
            progress = await self._digits.on_digit(sid, digit)
        except Exception:  # a broken entry must not swallow the key
            log.exception("keypad entry failed", **kv(call=sid))
            progress = None
        if progress is None:
            if await self._held_keys.hold(sid, digit):  # said while talking: wait for the words
                keys = await self._held_keys.wait_then_take(sid)
                if not keys:
                    return  # the utterance's turn took it
                digit = keys[-1]
            self.start_turn(TurnJob(call_sid=sid, kind="dtmf", text=digit))
        elif progress.done:
            self.start_turn(TurnJob(call_sid=sid, kind="digits", text=progress.entry))
        else:
            await asyncio.sleep(progress.waiting_s)
            done = await self._digits.expire(sid, progress.count)
            if done is not None:
                self.start_turn(TurnJob(call_sid=sid, kind="digits", text=done.entry))

    # ------------------------------------------------------------------ turns

    def start_turn(self, job: TurnJob) -> asyncio.Task[None]:
        """Run a turn in its own task; an unfinished older turn of the call is cancelled."""
        prev = self._active.get(job.call_sid)
        if prev is not None and prev.task is not None and not prev.task.done():
            prev.superseded = prev.cancel()  # else it is only storing what it said: wait
        else:
            prev = None
        me = _Active(job=job)
        task = asyncio.create_task(self._turn(me, prev))
        me.task = task
        self._active[job.call_sid] = me
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._turn_done(me, t))
        if job.utterance_id is not None and job.say is None:
            hb = TurnHeartbeat(
                call_sid=job.call_sid, utterance_id=job.utterance_id, worker_id=self._leases.owner
            )

            async def beat() -> None:
                await audio_client(self._broker).publish(
                    subjects.turn_heartbeat(job.call_sid), hb.to_bytes()
                )

            self._background(self._leases.hold(job.call_sid, job.utterance_id, task, beat=beat))
        return task

    def _turn_done(self, me: _Active, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        me.span.set(cancelled=task.cancelled())
        me.span.end()
        if self._active.get(me.job.call_sid) is me:
            del self._active[me.job.call_sid]

    async def _turn(self, me: _Active, prev: _Active | None) -> None:
        job, sid = me.job, me.job.call_sid
        if prev is not None and prev.task is not None:
            await asyncio.wait({prev.task}, timeout=SUPERSEDE_WAIT_S)
        resume = None
        if job.say is None:  # a dead holder's turn of this utterance continues here
            with contextlib.suppress(Exception):
                resume = await self._leases.progress(sid, job.utterance_id)
        turn = resume.turn if resume is not None else await self._history.next_turn(sid)
        me.turn = turn

        async def record(progress: TurnProgress) -> None:
            await self._leases.record(sid, job.utterance_id, progress)

        me.span = start_span(
            "agent.turn",
            parent=job.traceparent,
            call_sid=sid,
            turn=turn,
            kind=job.kind,
            utterance=job.utterance_id,
            provider=self._provider.name,
        )
        reply = ReplyOut(
            publish=self._send,
            job=job,
            turn=turn,
            cacheable=self._provider.cacheable,
            on_first=lambda text: self._first_sentence(job, turn),
            resume=resume,
            record=record if job.utterance_id is not None else None,
        )
        outcome = "done"
        actions: list[HangupAction | TransferAction] = []
        try:
            await self._history.mark_speaking(sid, turn)
            other = await self._history.mark_generating(sid, turn)
            if other is not None and other < turn and (prev is None or other != prev.turn):
                # Another replica is still generating an older turn of this call: stop it.
                await self._send(Interrupt(call_sid=sid, turn=other))
            log.info("turn started", **kv(call=sid, turn=turn, kind=job.kind))
            await self._event(
                sid,
                "agent.turn_started",
                turn,
                kind=job.kind,
                utterance_id=job.utterance_id,
                resumed_segments=len(resume.said) if resume is not None else None,
            )
            history = await self._history.load(sid)
            if (
                resume is not None
                and history
                and history[-1] == {"role": "user", "content": job.text}
            ):
                history = history[:-1]  # the dead holder stored the words: they are the input
            if resume is None and job.utterance_id is not None and job.say is None:
                await record(TurnProgress(turn=turn))  # a successor must not add the words again
            if resume is None and job.kind in ("utterance", "dtmf", "digits") and job.say is None:
                content = caller_input_text(job.kind, job.text, job.keys)
                await self._history.append(sid, [user_message(content, turn=turn)])
            try:
                async with asyncio.timeout(MAX_TURN_S):
                    if job.say is not None:
                        await reply.fail(job.say)
                    else:
                        inp = TurnInput(
                            call_sid=sid,
                            kind=job.kind,
                            text=job.text,
                            keys=job.keys,
                            history=history,
                            outbound=job.outbound or await self._history.outbound(sid),
                        )
                        actions = await self._generate(inp, reply)
            except Exception as e:  # asyncio.timeout's TimeoutError included
                outcome = "fallback"
                self._count_failure(e)
                log.warning(
                    "turn failed; apologizing",
                    **kv(call=sid, turn=turn, error=type(e).__name__, provider=self._provider.name),
                )
                if not reply.finished:
                    await reply.fail(FALLBACK_TEXT)
            me.cancellable = False
            for action in actions:
                await self._send(_action_message(sid, turn, action))
        except asyncio.CancelledError:
            outcome = "interrupted"
            if me.superseded:
                await self._send(Interrupt(call_sid=sid, turn=turn))
            raise
        except Exception:  # the bus itself failed (even the apology): log, never crash
            outcome = "failed"
            log.exception("turn failed", **kv(call=sid, turn=turn))
        finally:
            me.cancellable = False
            await self._finish(me, reply, outcome, actions)

    async def _finish(
        self,
        me: _Active,
        reply: ReplyOut,
        outcome: str,
        actions: list[HangupAction | TransferAction],
    ) -> None:
        """Store what was said, clear the generating flag, report the turn (also on cancel)."""
        sid, turn = me.job.call_sid, reply.turn
        try:
            entries = reply.close()
            if entries:
                await self._history.append(sid, entries)
            await self._history.done_generating(sid, turn)
            if reply.last_spoken_seq is None or outcome == "interrupted":
                await self._history.heard(sid, turn=turn, seq=-1, complete=False)
            else:
                await self._history.spoken_until(sid, turn=turn, last_seq=reply.last_spoken_seq)
            elapsed = time.perf_counter() - me.job.received
            STAGE_LATENCY.labels(SERVICE, "agent_turn").observe(elapsed)
            await self._event(
                sid,
                "agent.turn_done",
                turn,
                outcome=outcome,
                segments=reply.published,
                ms=round(elapsed * 1000, 1),
                actions=",".join(type(a).__name__ for a in actions) or None,
            )
        except Exception:
            log.exception("turn bookkeeping failed", **kv(call=sid, turn=turn))

    async def _generate(
        self, inp: TurnInput, reply: ReplyOut
    ) -> list[HangupAction | TransferAction]:
        """Stream the provider into ``reply``; return the actions it asked for."""
        queue: asyncio.Queue[AgentOutput | _Done | BaseException] = asyncio.Queue()
        producer = asyncio.create_task(_produce(self._provider.respond(inp), queue))
        splitter = SentenceSplitter(max_chars=SENTENCE_MAX_CHARS)
        actions: list[HangupAction | TransferAction] = []
        timeout_s = self._settings.provider_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s  # first output, then each gap
        asked = time.perf_counter()
        first_token = True
        try:
            while True:
                wait = deadline - loop.time()
                complete = splitter.pending_looks_complete()
                if reply.held is not None or complete:
                    wait = min(wait, HOLD_S)
                try:
                    item = await asyncio.wait_for(queue.get(), max(wait, 0.0))
                except TimeoutError:
                    if (reply.held is not None or complete) and loop.time() < deadline:
                        # The stream paused (a tool call, a slow model): say what is ready.
                        if complete:
                            await reply.sentence(splitter.flush())
                        await reply.release()
                        continue
                    raise ProviderTimeout(
                        "agent provider stalled", provider=self._provider.name
                    ) from None
                deadline = loop.time() + timeout_s
                if isinstance(item, _Done):
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, str):
                    if first_token and item:
                        first_token = False
                        took = time.perf_counter() - asked
                        STAGE_LATENCY.labels(SERVICE, "agent_first_token").observe(took)
                    for sentence in splitter.feed(item):
                        await reply.sentence(sentence)
                    if splitter.pending.strip():
                        await reply.release()  # more text follows the held sentence
                elif isinstance(item, HistoryItem):
                    rest = splitter.flush()
                    if rest:
                        await reply.sentence(rest)
                    await reply.release()
                    reply.item(item.message)
                elif isinstance(item, HangupAction | TransferAction):
                    actions.append(item)
                elif isinstance(item, UsageReport):
                    self._background(self._usage(inp.call_sid, reply.turn, item))
            await reply.finish(splitter.flush())
            return actions
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    def _count_failure(self, e: BaseException) -> None:
        # ProviderErrors are counted where they are raised (shared.retry); count the rest.
        if isinstance(e, ProviderTimeout) or not isinstance(e, ProviderError):
            PROVIDER_ERRORS.labels(SERVICE, self._provider.name, type(e).__name__).inc()

    async def _first_sentence(self, job: TurnJob, turn: int) -> None:
        elapsed = time.perf_counter() - job.received
        STAGE_LATENCY.labels(SERVICE, "agent_first_sentence").observe(elapsed)
        data: dict[str, Any] = {"ms": round(elapsed * 1000, 1)}
        if job.speech_ended_at is not None:
            data["since_speech_end_ms"] = round((time.time() - job.speech_ended_at) * 1000, 1)
        await self._event(job.call_sid, "agent.first_sentence", turn, **data)

    # ------------------------------------------------------------------ bus

    async def _send(self, message: BusMessage) -> None:
        """Publish a reply segment or control message on the call's subject."""
        sid = message.call_sid
        is_reply = isinstance(message, ReplySegment)
        subject = subjects.reply(sid) if is_reply else subjects.control(sid)
        active = self._active.get(sid)
        hdrs = with_trace(None, active.span) if active is not None else None
        await audio_client(self._broker).publish(subject, message.to_bytes(), headers=hdrs)

    async def _usage(self, call_sid: str, turn: int, report: UsageReport) -> None:
        """One model request's tokens on the call's events (shared.usage), for its cost."""
        usage = Usage(
            stage="llm",
            provider=self._provider.name,
            model=report.model[:64],
            prompt_tokens=report.prompt_tokens,
            completion_tokens=report.completion_tokens,
        )
        ev = usage_event(call_sid=call_sid, service=SERVICE, usage=usage, turn=turn)
        try:
            await audio_client(self._broker).publish(subjects.events(call_sid), ev.to_bytes())
        except Exception as e:  # usage is best effort, like every event
            log.debug("usage not published", **kv(error=type(e).__name__))

    async def _event(self, call_sid: str, name: str, turn: int | None, **data: Any) -> None:
        ev = event(call_sid=call_sid, service=SERVICE, name=name, turn=turn, **data)
        try:
            await audio_client(self._broker).publish(subjects.events(call_sid), ev.to_bytes())
        except Exception as e:  # events are best effort
            log.debug("event not published", **kv(error=type(e).__name__))

    def _background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ shutdown

    async def drain(self, *, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop taking turns, let running ones finish (up to ``timeout_s``).

        The plain control subscription stays up meanwhile, so a barge-in still stops a turn.
        """
        for sub in self._work_subs:
            raw = getattr(sub, "subscription", None)
            if raw is None:
                continue
            try:
                # nats-py drain: unsubscribe, then hand over what was already delivered.
                await raw.drain()
            except Exception as e:
                log.warning("subscription drain failed", **kv(error=type(e).__name__))
            sub.subscription = None  # FastStream must not unsubscribe it again
        pending = set(self._tasks)
        if pending:
            log.info("draining turns", **kv(turns=len(pending)))
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2.0)


async def _produce(
    stream: AsyncIterator[AgentOutput], queue: asyncio.Queue[AgentOutput | _Done | BaseException]
) -> None:
    """Pump the provider's stream into the turn's queue (errors travel as items)."""
    try:
        async for item in stream:
            queue.put_nowait(item)
        queue.put_nowait(_DONE)
    except Exception as e:
        queue.put_nowait(e)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                pass


def _action_message(call_sid: str, turn: int, action: HangupAction | TransferAction) -> BusMessage:
    if isinstance(action, HangupAction):
        return Hangup(call_sid=call_sid, after_turn=turn, reason=action.reason)
    return Transfer(call_sid=call_sid, to=action.to, after_turn=turn)


def _check_subject(message: BusMessage, msg: NatsMessage) -> None:
    # A body naming another call than its subject is forged or broken: never act on it.
    if message.call_sid != subjects.call_sid_of(msg.raw_message.subject):
        raise ValueError("call sid does not match the subject")


def _bad(source: str, e: Exception) -> None:
    BAD_MESSAGES.labels(SERVICE, source).inc()
    log.warning("bad message dropped", **kv(source=source, error=type(e).__name__))


# ---------------------------------------------------------------------- process


async def run(settings: Settings) -> int:
    """Run the worker until SIGTERM/SIGINT, then drain and return the exit code."""
    stop = stop_event()
    health = Health(service=settings.service_name or SERVICE)
    serve_metrics(settings.metrics_port, health=health)
    from services.agent.providers.select import start_provider

    store = Store(url=settings.redis_url, settings=settings)
    tools = CallTools(settings=settings, store=store)
    provider, mcp = await start_provider(settings, tools)
    broker = make_broker(settings, name=settings.service_name or SERVICE)
    health.watch_broker(broker)
    worker = AgentWorker(
        settings=settings, provider=provider, history=History(store=store), broker=broker
    )
    worker.attach()
    await broker.start()
    # A round trip to the server: our subscriptions are in place before we say "ready".
    await audio_client(broker).flush(timeout=5)
    log.info(
        "agent worker ready",
        **kv(provider=provider.name, redis=store.uses_redis, tools=",".join(tools.names)),
    )
    health.start_ticker()
    await stop.wait()
    health.draining = True
    log.info("agent worker draining")
    await worker.drain()
    await broker.stop()
    await provider.aclose()
    if mcp is not None:
        await mcp.aclose()
    await store.aclose()
    log.info("agent worker stopped")
    return 0


# The bus contract of this service (docs/asyncapi/agent.yaml; ``voiceagent asyncapi``).
asyncapi_app = contract_app(
    "agent",
    receives=("transcript", "control", "control.asr", "retry.turn"),
    sends=("reply", "control", "events", "turn.heartbeat"),
)


def main() -> None:
    """``python -m services.agent``."""
    run_service(SERVICE, run)
