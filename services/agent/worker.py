"""The agent worker: caller turns in, reply sentences and call actions out, over NATS.

Subscriptions (every call through one wildcard each):

- ``voice.*.transcript``, queue group ``agent``: a final, non-empty transcript starts a turn.
- ``voice.*.control``, queue group ``agent``: control messages that start turns or update the
  shared history (:meth:`services.agent.control.ControlRouter.route`).
- ``voice.*.retry.turn``, queue group ``agent``: a final transcript the gateway sent again
  because no reply started; the turn lease (:mod:`services.agent.leases`) makes sure only one
  replica ever answers an utterance (docs/failover.md).
- ``voice.*.control``, plain: ``Interrupt`` and ``CallEnded`` stop this replica's turns
  (:meth:`services.agent.control.ControlRouter.follow`).

Handlers only start tasks, so a slow turn never holds up other calls' messages. A turn is
:mod:`services.agent.turn`; its reply streaming :mod:`services.agent.reply`.
"""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from faststream.nats.subscriber.usecases.core_subscriber import CoreSubscriber

from services.agent.control import ControlRouter
from services.agent.digits import DigitCollector, KeysWhileTalking
from services.agent.history import History
from services.agent.leases import TurnLeases
from services.agent.providers.base import AgentProvider
from services.agent.publish import Publisher
from services.agent.store import Store
from services.agent.tools import CallTools
from services.agent.turn import TurnJob, Turns
from shared import subjects
from shared.asyncapi import contract_app
from shared.backchannel import is_backchannel, parse_backchannels
from shared.bus import audio_client, make_broker
from shared.handler import bad_message, parse_for_subject
from shared.logging import kv
from shared.messages import (
    SpeechStarted,
    StageFailed,
    Transcript,
    parse_control,
    parse_transcript,
)
from shared.service import Health, run_service, serve_metrics, stop_event, worker_id
from shared.settings import Settings
from shared.telemetry import traceparent_of

log = logging.getLogger(__name__)

SERVICE = "agent"
DRAIN_TIMEOUT_S = 30.0


async def _raw_body(msg: NatsMessage) -> bytes:
    # FastStream would json-decode by content type before our handler could count bad input.
    return msg.body


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
        self._history = history
        self._broker = broker
        self._digits = digits if digits is not None else DigitCollector(store=history.store)
        self._held_keys = KeysWhileTalking(store=history.store)
        self._work_subs: list[CoreSubscriber] = []
        owner = worker_id(settings.service_name or SERVICE)
        self._leases = TurnLeases(store=history.store, owner=owner)
        self._backchannels = parse_backchannels(settings.backchannel_words)
        self._publish = Publisher(broker=broker, provider=provider)
        self._turns = Turns(
            settings=settings,
            provider=provider,
            history=history,
            leases=self._leases,
            publisher=self._publish,
        )
        self._control = ControlRouter(
            turns=self._turns, history=history, digits=self._digits, held_keys=self._held_keys
        )

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

    def start_turn(self, job: TurnJob) -> asyncio.Task[None]:
        """Run a turn in its own task; an unfinished older turn of the call is cancelled."""
        return self._turns.start(job)

    # ------------------------------------------------------------------ handlers

    async def on_transcript(self, body: bytes, msg: NatsMessage) -> None:
        """A final, non-empty transcript starts a turn; everything else is ignored."""
        subject = msg.raw_message.subject
        tr = parse_for_subject(
            parse_transcript, body, subject, service=SERVICE, source="transcript"
        )
        if tr is None:
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
            await self._publish.event(tr.call_sid, "agent.backchannel_ignored", None)
            return
        # One replica answers each utterance, also when the gateway sends it again.
        if not await self._leases.acquire(tr.call_sid, tr.utterance_id):
            return
        self._turns.background(self._digits.cancel(tr.call_sid))  # spoke instead of typing
        self.start_turn(
            TurnJob(
                call_sid=tr.call_sid,
                kind="utterance",
                text=tr.text.strip(),
                keys=await self._held_keys.take(tr.call_sid),
                utterance_id=tr.utterance_id,
                speech_ended_at=tr.speech_ended_at,
                continues=tr.continues,
                traceparent=traceparent_of(msg.headers),
            )
        )

    async def on_control(self, body: bytes, msg: NatsMessage) -> None:
        """Queue-group control: one replica greets, answers keys, updates shared history."""
        subject = msg.raw_message.subject
        ctl = parse_for_subject(parse_control, body, subject, service=SERVICE, source="control")
        if ctl is None:
            return
        await self._control.route(ctl, traceparent=traceparent_of(msg.headers))

    async def on_asr_control(self, body: bytes, msg: NatsMessage) -> None:
        """ASR's subject: only its ``StageFailed`` counts (anything else there is forged)."""
        subject = msg.raw_message.subject
        ctl = parse_for_subject(parse_control, body, subject, service=SERVICE, source="control")
        if ctl is None:
            return
        if not isinstance(ctl, StageFailed) or ctl.service != "asr":
            bad_message(service=SERVICE, source="control", error=ValueError("not an ASR failure"))
            return
        await self.on_control(body, msg)

    async def on_control_all(self, body: bytes, msg: NatsMessage) -> None:
        """Every replica: stop an interrupted turn, forget an ended call."""
        try:
            ctl = parse_control(body)
        except ValueError:  # ValidationError included
            return  # counted once, by the queue-group handler
        if ctl.call_sid != subjects.call_sid_of(msg.raw_message.subject):
            return  # forged or broken: counted by the queue-group handler too
        self._control.follow(ctl)

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
        pending = set(self._turns.tasks)
        if pending:
            log.info("draining turns", **kv(turns=len(pending)))
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2.0)


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
