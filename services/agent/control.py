"""Control messages to turns: a call's start and end, keys, prompts, playback, failures, barge-in.

:meth:`ControlRouter.route` acts for the queue group (one replica per message): ``CallStarted``
(greeting turn), ``Dtmf`` (a turn, or a key of a keypad entry: :mod:`services.agent.digits`),
``Prompt`` (silence / call-limit turn: :mod:`services.agent.fixed_prompts`), ``Played``
(history truncation), ``CallEnded`` (shared cleanup), ``StageFailed`` (apology).
:meth:`ControlRouter.follow` runs on every replica: ``Interrupt`` cancels the turn if this
replica generates it; ``CallEnded`` cancels this replica's turns of the call and drops its
local state.
"""

from __future__ import annotations

import asyncio
import logging

from services.agent.digits import DigitCollector, KeysWhileTalking
from services.agent.fixed_prompts import prompt_turn
from services.agent.history import History
from services.agent.turn import TurnJob, Turns
from shared.logging import kv
from shared.messages import (
    BusMessage,
    CallEnded,
    CallStarted,
    Dtmf,
    Interrupt,
    Played,
    Prompt,
    StageFailed,
)

log = logging.getLogger(__name__)

STAGE_APOLOGY = "Sorry, I'm having trouble hearing you right now. Please bear with me."


class ControlRouter:
    """Turns control messages into turns and history updates."""

    def __init__(
        self,
        *,
        turns: Turns,
        history: History,
        digits: DigitCollector,
        held_keys: KeysWhileTalking,
    ) -> None:
        self._turns = turns
        self._history = history
        self._digits = digits
        self._held_keys = held_keys

    async def route(self, ctl: BusMessage, *, traceparent: str | None) -> None:
        """Queue group: greet, answer keys and prompts, update the shared history."""
        sid = ctl.call_sid
        turns = self._turns
        if isinstance(ctl, CallStarted):
            if ctl.outbound is not None:
                await self._history.set_outbound(sid, ctl.outbound)
            job = TurnJob(
                call_sid=sid, kind="call_started", traceparent=traceparent, outbound=ctl.outbound
            )
            turns.start(job)
        elif isinstance(ctl, Dtmf):
            turns.background(self._on_dtmf(sid, ctl.digit))
        elif isinstance(ctl, Prompt):
            kind, text = prompt_turn(ctl.reason)
            turns.start(TurnJob(call_sid=sid, kind=kind, text=text))
        elif isinstance(ctl, Played):
            turns.background(
                self._history.heard(sid, turn=ctl.turn, seq=ctl.seq, complete=ctl.complete)
            )
            turns.background(
                self._history.record_played(
                    sid,
                    turn=ctl.turn,
                    seq=ctl.seq,
                    heard_text=ctl.heard_text,
                    complete=ctl.complete,
                )
            )
        elif isinstance(ctl, CallEnded):
            turns.background(self._history.end_call(sid))
            turns.background(self._digits.cancel(sid))
            turns.background(self._held_keys.forget(sid))
        elif isinstance(ctl, StageFailed) and ctl.service != "tts":
            # A TTS failure cannot be apologized for out loud; anything else can.
            log.warning("stage failed", **kv(call=sid, stage=ctl.service))
            turns.start(TurnJob(call_sid=sid, kind="utterance", say=STAGE_APOLOGY))

    def follow(self, ctl: BusMessage) -> None:
        """Every replica: stop an interrupted turn, forget an ended call."""
        if isinstance(ctl, Played | Interrupt):
            # Every replica follows the call's turn ids: Redis restarting empty must not make
            # one hand out an id the gateway already played (its audio would be dropped).
            self._history.saw_turn(ctl.call_sid, ctl.turn)
        if isinstance(ctl, Interrupt):
            active = self._turns.active.get(ctl.call_sid)
            if active and active.turn == ctl.turn and active.cancel():
                log.info("turn interrupted", **kv(call=ctl.call_sid, turn=ctl.turn))
        elif isinstance(ctl, CallEnded):
            active = self._turns.active.get(ctl.call_sid)
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
            self._turns.start(TurnJob(call_sid=sid, kind="dtmf", text=digit))
        elif progress.done:
            self._turns.start(TurnJob(call_sid=sid, kind="digits", text=progress.entry))
        else:
            await asyncio.sleep(progress.waiting_s)
            done = await self._digits.expire(sid, progress.count)
            if done is not None:
                self._turns.start(TurnJob(call_sid=sid, kind="digits", text=done.entry))
