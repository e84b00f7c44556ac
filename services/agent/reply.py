"""A turn's reply: the provider's stream cut into sentences, published as numbered segments.

:func:`stream_reply` reads the provider's output (text deltas, history items, actions, usage)
through the sentence splitter into a :class:`ReplyOut`, which publishes each sentence as a
``ReplySegment`` and builds the turn's history entries.

The last segment: a complete sentence is held back for up to :data:`HOLD_S` to learn whether
more text follows, so the final sentence itself usually carries ``last=True``. When text stops
for longer (a tool call, a slow model) the held sentence goes out with ``last=False`` rather
than waiting (as does pending text that ends like a sentence but still waits for its next
character); if the stream then ends with nothing more to say, an empty ``last`` segment
closes the turn (TTS turns it into an empty last chunk). This bounds the added latency to
:data:`HOLD_S` and never delays a sentence behind a tool call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from services.agent.history import item_message, spoken_message
from services.agent.leases import TurnProgress
from services.agent.providers.base import (
    AgentOutput,
    HangupAction,
    HistoryItem,
    TransferAction,
    UsageReport,
)
from services.agent.sentences import SentenceSplitter
from shared.answers import expected_answer
from shared.errors import ProviderTimeout
from shared.messages import AgentAsked, BusMessage, ReplySegment
from shared.metrics import STAGE_LATENCY

SERVICE = "agent"
HOLD_S = 0.15
SENTENCE_MAX_CHARS = 120


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class ReplyOut:
    """Publishes one turn's sentences as numbered segments and remembers what was said.

    Holds the latest complete sentence back (see module docstring) and builds the history
    entries of the turn in order: spoken text, then any tool items, then more spoken text.
    """

    def __init__(
        self,
        *,
        publish: Callable[[BusMessage], Any],
        call_sid: str,
        utterance_id: int | None,
        speech_ended_at: float | None,
        turn: int,
        cacheable: Callable[[str], bool],
        on_first: Callable[[str], Any],
        resume: TurnProgress | None = None,
        record: Callable[[TurnProgress], Awaitable[None]] | None = None,
    ) -> None:
        self._publish = publish
        self._call_sid = call_sid
        self._utterance_id = utterance_id
        self._speech_ended_at = speech_ended_at
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
        # Progress is recorded before each publish, so the dead holder's last sentence may
        # never have gone out: it is sent again under its own number (:meth:`resend`), which
        # the gateway drops if it already has it.
        self._resend: ReplySegment | None = None
        if said:
            self._resend = ReplySegment(
                call_sid=call_sid,
                turn=turn,
                seq=len(said) - 1,
                text=said[-1],
                last=False,
                utterance_id=utterance_id,
                speech_ended_at=speech_ended_at,
                cacheable=cacheable(said[-1]),
            )
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

    async def resend(self) -> None:
        """A taken-over turn: publish the dead holder's last recorded sentence again (once)."""
        if self._resend is not None:
            seg, self._resend = self._resend, None
            await self._publish(seg)

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
        await self.resend()
        if self._skip:
            if _norm(text) == self._skip[0]:
                self._skip.pop(0)
                if not last:
                    return  # the caller heard it from the replica that died
                text = ""  # the turn still needs its last segment
            else:
                self._skip = []  # the new reply went another way: say it from here
        seg = ReplySegment(
            call_sid=self._call_sid,
            turn=self.turn,
            seq=self.seq,
            text=text,
            last=last,
            utterance_id=self._utterance_id,
            speech_ended_at=self._speech_ended_at,
            cacheable=self._cacheable(text) if cacheable is None else cacheable,
        )
        if text:
            # Recorded before it is published: a replica killed in between leaves a sentence
            # its successor sends again (dropped as a duplicate), never one said twice.
            self._said.append(text)
            if self._record is not None:
                await self._record(TurnProgress(turn=self.turn, said=list(self._said)))
        await self._publish(seg)
        if text:
            if not self._spoken:
                self._spoken_seq0 = self.seq
            self._spoken.append(text)
            self.last_spoken_seq = self.seq
        self.seq += 1
        if last:
            # What the reply ends by asking for: the ASR's end-of-turn decision waits for it.
            asked = expected_answer(self._said[-1]) if self._said else None
            await self._publish(AgentAsked(call_sid=self._call_sid, turn=self.turn, expects=asked))
        if text and not self._first_sent:
            self._first_sent = True
            await self._on_first(text)


class _Done:
    """End-of-stream marker on a turn's output queue."""


_DONE = _Done()


async def stream_reply(
    outputs: AsyncIterator[AgentOutput],
    reply: ReplyOut,
    *,
    timeout_s: float,
    provider: str,
    on_usage: Callable[[UsageReport], None],
) -> list[HangupAction | TransferAction]:
    """Stream the provider's ``outputs`` into ``reply``; return the actions it asked for.

    ``timeout_s`` bounds the wait for the first output and every gap after it
    (``ProviderTimeout``); a provider error is raised here.
    """
    queue: asyncio.Queue[AgentOutput | _Done | BaseException] = asyncio.Queue()
    producer = asyncio.create_task(_produce(outputs, queue))
    splitter = SentenceSplitter(max_chars=SENTENCE_MAX_CHARS)
    actions: list[HangupAction | TransferAction] = []
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
                raise ProviderTimeout("agent provider stalled", provider=provider) from None
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
                on_usage(item)
        await reply.finish(splitter.flush())
        return actions
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


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
