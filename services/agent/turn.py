"""One turn: the caller's input and the history in, the provider's reply and actions out.

A turn: allocate the turn id (or take over a dead holder's, :mod:`services.agent.leases`), say
it is on, store the caller's words, stream the provider's output as reply segments
(:mod:`services.agent.reply`), publish ``Hangup``/``Transfer`` with ``after_turn``, store what
was said. :class:`Turns` runs each in its own task, so a slow turn never holds up other calls.

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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from services.agent.digits import caller_input_text
from services.agent.history import History, user_message
from services.agent.leases import TurnLeases, TurnProgress
from services.agent.providers.base import (
    AgentProvider,
    HangupAction,
    TransferAction,
    TurnInput,
    TurnKind,
)
from services.agent.publish import Publisher
from services.agent.reply import ReplyOut, stream_reply
from shared.errors import ProviderError, ProviderTimeout
from shared.logging import kv
from shared.messages import BusMessage, Hangup, Interrupt, Transfer, TurnHeartbeat
from shared.metrics import PROVIDER_ERRORS, STAGE_LATENCY
from shared.outbound import OutboundContext
from shared.settings import Settings
from shared.telemetry import NO_SPAN, Span, start_span

log = logging.getLogger(__name__)

SERVICE = "agent"
FALLBACK_TEXT = "Sorry, I'm having trouble right now. Please bear with me and try again."
MAX_TURN_S = 60.0
SUPERSEDE_WAIT_S = 1.0  # let a cancelled older turn store what it said before reading history

Action = HangupAction | TransferAction


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
    continues: int | None = None  # the utterance these words go on from: withdraw its turn


@dataclass(eq=False)
class ActiveTurn:
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


class Turns:
    """This replica's turns: at most one running per call; their tasks and helpers' tasks."""

    def __init__(
        self,
        *,
        settings: Settings,
        provider: AgentProvider,
        history: History,
        leases: TurnLeases,
        publisher: Publisher,
    ) -> None:
        self._settings = settings
        self._provider = provider
        self._history = history
        self._leases = leases
        self._publish = publisher
        self.active: dict[str, ActiveTurn] = {}  # call -> its turn running on this replica
        self.tasks: set[asyncio.Task[None]] = set()  # what draining waits for

    def start(self, job: TurnJob) -> asyncio.Task[None]:
        """Run a turn in its own task; an unfinished older turn of the call is cancelled."""
        prev = self.active.get(job.call_sid)
        if prev is not None and prev.task is not None and not prev.task.done():
            prev.superseded = prev.cancel()  # else it is only storing what it said: wait
        else:
            prev = None
        me = ActiveTurn(job=job)
        task = asyncio.create_task(self._run(me, prev))
        me.task = task
        self.active[job.call_sid] = me
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._done(me, t))
        if job.utterance_id is not None and job.say is None:
            hb = TurnHeartbeat(
                call_sid=job.call_sid, utterance_id=job.utterance_id, worker_id=self._leases.owner
            )

            async def beat() -> None:
                await self._publish.heartbeat(hb)

            self.background(self._leases.hold(job.call_sid, job.utterance_id, task, beat=beat))
        return task

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in a task that draining waits for."""
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send(self, message: BusMessage) -> None:
        """Publish on the call's subject, in the trace of its turn running here (if any)."""
        active = self.active.get(message.call_sid)
        await self._publish.send(message, span=active.span if active is not None else None)

    def _done(self, me: ActiveTurn, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        me.span.set(cancelled=task.cancelled())
        me.span.end()
        if self.active.get(me.job.call_sid) is me:
            del self.active[me.job.call_sid]

    # ------------------------------------------------------------------ one turn

    async def _run(self, me: ActiveTurn, prev: ActiveTurn | None) -> None:
        turn, resume = await self._allocate(me, prev)
        reply = self._reply(me, turn, resume)
        sid = me.job.call_sid
        outcome = "done"
        actions: list[Action] = []
        try:
            await self._announce(me, turn, prev, resume)
            await reply.resend()  # a taken-over turn: its last sentence may not have gone out
            history = await self._history_with_input(me.job, turn, resume)
            actions, outcome = await self._respond(me.job, reply, history)
            me.cancellable = False
            for action in actions:
                await self.send(_action_message(sid, turn, action))
        except asyncio.CancelledError:
            outcome = "interrupted"
            if me.superseded:
                await self.send(Interrupt(call_sid=sid, turn=turn))
            raise
        except Exception:  # the bus itself failed (even the apology): log, never crash
            outcome = "failed"
            log.exception("turn failed", **kv(call=sid, turn=turn))
        finally:
            me.cancellable = False
            await self._finish(me, reply, outcome, actions)

    async def _allocate(
        self, me: ActiveTurn, prev: ActiveTurn | None
    ) -> tuple[int, TurnProgress | None]:
        """The turn's id, and what a dead holder of this utterance already said of it."""
        job, sid = me.job, me.job.call_sid
        if prev is not None and prev.task is not None:
            await asyncio.wait({prev.task}, timeout=SUPERSEDE_WAIT_S)
        resume = None
        if job.say is None:  # a dead holder's turn of this utterance continues here
            with contextlib.suppress(Exception):
                resume = await self._leases.progress(sid, job.utterance_id)
        turn = resume.turn if resume is not None else await self._history.next_turn(sid)
        me.turn = turn
        return turn, resume

    def _reply(self, me: ActiveTurn, turn: int, resume: TurnProgress | None) -> ReplyOut:
        """Open the turn's span and its reply."""
        job = me.job
        me.span = start_span(
            "agent.turn",
            parent=job.traceparent,
            call_sid=job.call_sid,
            turn=turn,
            kind=job.kind,
            utterance=job.utterance_id,
            provider=self._provider.name,
        )
        return ReplyOut(
            publish=self.send,
            call_sid=job.call_sid,
            utterance_id=job.utterance_id,
            speech_ended_at=job.speech_ended_at,
            turn=turn,
            cacheable=self._provider.cacheable,
            on_first=lambda text: self._first_sentence(job, turn),
            resume=resume,
            record=self._recorder(job) if job.utterance_id is not None else None,
        )

    def _recorder(self, job: TurnJob) -> Callable[[TurnProgress], Awaitable[None]]:
        async def record(progress: TurnProgress) -> None:
            await self._leases.record(job.call_sid, job.utterance_id, progress)

        return record

    async def _announce(
        self, me: ActiveTurn, turn: int, prev: ActiveTurn | None, resume: TurnProgress | None
    ) -> None:
        """Mark the call speaking and generating this turn (an older one elsewhere stops)."""
        job, sid = me.job, me.job.call_sid
        await self._history.mark_speaking(sid, turn)
        other = await self._history.mark_generating(sid, turn)
        if other is not None and other < turn and (prev is None or other != prev.turn):
            # Another replica is still generating an older turn of this call: stop it.
            await self.send(Interrupt(call_sid=sid, turn=other))
        log.info("turn started", **kv(call=sid, turn=turn, kind=job.kind))
        await self._publish.event(
            sid,
            "agent.turn_started",
            turn,
            kind=job.kind,
            utterance_id=job.utterance_id,
            resumed_segments=len(resume.said) if resume is not None else None,
        )

    async def _history_with_input(
        self, job: TurnJob, turn: int, resume: TurnProgress | None
    ) -> list[dict[str, Any]]:
        """The history the provider answers from; the caller's words are stored once."""
        sid = job.call_sid
        if job.continues is not None and resume is None:
            # The caller went on after a fragment: its turn (words, reply) leaves the history,
            # these words include it. Its task was superseded, so it has stored what it said.
            with contextlib.suppress(Exception):
                fragment = await self._leases.progress(sid, job.continues)
                if fragment is not None:
                    await self._history.withdraw(sid, turn=fragment.turn)
        history = await self._history.load(sid)
        if resume is not None and history and history[-1] == {"role": "user", "content": job.text}:
            history = history[:-1]  # the dead holder stored the words: they are the input
        if resume is None and job.utterance_id is not None and job.say is None:
            # A successor must not add the words again.
            await self._recorder(job)(TurnProgress(turn=turn))
        if resume is None and job.kind in ("utterance", "dtmf", "digits") and job.say is None:
            content = caller_input_text(job.kind, job.text, job.keys)
            await self._history.append(sid, [user_message(content, turn=turn)])
        return history

    async def _respond(
        self, job: TurnJob, reply: ReplyOut, history: list[dict[str, Any]]
    ) -> tuple[list[Action], str]:
        """Say the fixed words, or stream the provider; apologize if it fails.

        Returns the actions the provider asked for and the turn's outcome.
        """
        sid = job.call_sid
        actions: list[Action] = []
        outcome = "done"
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
                    actions = await stream_reply(
                        self._provider.respond(inp),
                        reply,
                        timeout_s=self._settings.provider_timeout_s,
                        provider=self._provider.name,
                        on_usage=lambda report: self.background(
                            self._publish.usage(sid, reply.turn, report)
                        ),
                    )
        except Exception as e:  # asyncio.timeout's TimeoutError included
            outcome = "fallback"
            self._count_failure(e)
            error, provider = type(e).__name__, self._provider.name
            log.warning(
                "turn failed; apologizing",
                **kv(call=sid, turn=reply.turn, error=error, provider=provider),
            )
            if not reply.finished:
                await reply.fail(FALLBACK_TEXT)
        return actions, outcome

    async def _finish(
        self, me: ActiveTurn, reply: ReplyOut, outcome: str, actions: list[Action]
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
            await self._publish.event(
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

    def _count_failure(self, e: BaseException) -> None:
        # ProviderErrors are counted where they are raised (shared.backoff); count the rest.
        if isinstance(e, ProviderTimeout) or not isinstance(e, ProviderError):
            PROVIDER_ERRORS.labels(SERVICE, self._provider.name, type(e).__name__).inc()

    async def _first_sentence(self, job: TurnJob, turn: int) -> None:
        elapsed = time.perf_counter() - job.received
        STAGE_LATENCY.labels(SERVICE, "agent_first_sentence").observe(elapsed)
        data: dict[str, Any] = {"ms": round(elapsed * 1000, 1)}
        if job.speech_ended_at is not None:
            data["since_speech_end_ms"] = round((time.time() - job.speech_ended_at) * 1000, 1)
        await self._publish.event(job.call_sid, "agent.first_sentence", turn, **data)


def _action_message(call_sid: str, turn: int, action: Action) -> BusMessage:
    if isinstance(action, HangupAction):
        return Hangup(call_sid=call_sid, after_turn=turn, reason=action.reason)
    return Transfer(call_sid=call_sid, to=action.to, after_turn=turn)
