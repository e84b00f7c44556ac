"""A scripted call for the console's browser tests: the bus messages a real call publishes.

Each step is (seconds into the call, subject kind, message) built with the services' own
models (``shared.messages``), so the console reads exactly what the gateway, ASR, agent and TTS
would send. Times are given, not measured: the tests know where every mark must be drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NATS

from shared import subjects
from shared.messages import (
    BusMessage,
    CallEnded,
    CallStarted,
    Dtmf,
    Event,
    Interrupt,
    Played,
    Prompt,
    ReplySegment,
    SpeechStarted,
    SpeechStopped,
    Transcript,
    event,
)


@dataclass(frozen=True)
class Step:
    """One message of the script, ``t`` seconds after the call started."""

    t: float
    kind: str  # transcript, reply, control, events
    msg: BusMessage


@dataclass(frozen=True)
class Turn:
    """What the tests expect of one answered utterance."""

    turn: int
    caller: str
    agent: list[str]
    v2v_ms: float
    parts: dict[str, float]  # endpointing, recognition, agent, tts, overhead


TURNS = [
    Turn(
        turn=1,
        caller="What are your opening hours?",
        agent=["We open at nine in the morning.", "On Saturdays we open at ten."],
        v2v_ms=1000.0,
        parts={"endpointing": 200, "recognition": 250, "agent": 310, "tts": 140, "overhead": 100},
    ),
    Turn(
        turn=2,
        caller="Can I book an appointment for Tuesday?",
        agent=["Sure, I can book you in for Tuesday.", "Would the morning or the afternoon suit?"],
        v2v_ms=1250.0,
        parts={"endpointing": 220, "recognition": 260, "agent": 420, "tts": 160, "overhead": 190},
    ),
    Turn(
        turn=3,
        caller="Actually, make it Wednesday.",
        agent=["Wednesday it is.", "Morning or afternoon?"],
        v2v_ms=1100.0,
        parts={"endpointing": 180, "recognition": 240, "agent": 390, "tts": 150, "overhead": 140},
    ),
]
FALSE_INTERRUPTION_AT = 8.5  # during turn 1 (a backchannel: the agent resumes)
FALSE_RESUMED_AT = 8.9
BARGE_IN_AT = 19.5  # during turn 2 (the caller's real interruption)
BARGE_CONFIRMED_AT = 19.9
KEY_AT = 26.0
LOST_AT = 27.0
RECLAIMED_AT = 27.4
PROMPT_AT = 35.0
HANGUP_AT = 40.5
ENDED_AT = 41.0
MIDPOINT = 25.0  # a page opened here has seen turns 1-3 only from the store


def _answer(
    sid: str, turn: Turn, utterance: int, *, speech: tuple[float, float], played: list[float]
) -> list[Step]:
    """An utterance (speech from ``speech[0]`` to ``speech[1]``) and the turn that answers it."""
    p = turn.parts
    start, end = speech
    stopped = end + p["endpointing"] / 1000
    final = stopped + p["recognition"] / 1000
    first_sentence = final + p["agent"] / 1000 + 0.02
    first_audio = end + turn.v2v_ms / 1000
    steps = [
        Step(
            start + 0.1,
            "transcript",
            SpeechStarted(call_sid=sid, utterance_id=utterance, audio_ms=0),
        ),
        Step(
            start + 0.6,
            "transcript",
            Transcript(
                call_sid=sid, utterance_id=utterance, text=turn.caller.split()[0], is_final=False
            ),
        ),
        Step(
            stopped,
            "transcript",
            SpeechStopped(
                call_sid=sid,
                utterance_id=utterance,
                audio_ms=0,
                speech_ms=round((end - start) * 1000),
            ),
        ),
        Step(
            final,
            "transcript",
            Transcript(
                call_sid=sid,
                utterance_id=utterance,
                text=turn.caller,
                is_final=True,
                endpointing_ms=p["endpointing"],
                asr_ms=p["recognition"],
                speech_ended_at=end,  # seconds into the call, like ``Step.t``
            ),
        ),
        Step(
            final,
            "events",
            event(
                call_sid=sid,
                service="asr",
                name="asr.final",
                utterance_id=utterance,
                endpointing_ms=p["endpointing"],
                asr_ms=p["recognition"],
            ),
        ),
        Step(
            final + 0.01,
            "events",
            event(
                call_sid=sid,
                service="agent",
                name="agent.turn_started",
                turn=turn.turn,
                kind="utterance",
                utterance_id=utterance,
            ),
        ),
        Step(
            first_sentence,
            "events",
            event(
                call_sid=sid,
                service="agent",
                name="agent.first_sentence",
                turn=turn.turn,
                ms=p["agent"],
            ),
        ),
    ]
    for seq, text in enumerate(turn.agent):
        steps.append(
            Step(
                first_sentence + 0.001 + seq * 0.3,
                "reply",
                ReplySegment(
                    call_sid=sid,
                    turn=turn.turn,
                    seq=seq,
                    text=text,
                    last=seq == len(turn.agent) - 1,
                    utterance_id=utterance,
                ),
            )
        )
    steps += [
        Step(
            first_sentence + p["tts"] / 1000 + 0.01,
            "events",
            event(
                call_sid=sid,
                service="tts",
                name="tts.first_audio",
                turn=turn.turn,
                ms=p["tts"],
                seq=0,
            ),
        ),
        Step(
            first_audio,
            "events",
            event(
                call_sid=sid,
                service="gateway",
                name="turn.first_audio",
                turn=turn.turn,
                seq=0,
                voice_to_voice_ms=turn.v2v_ms,
            ),
        ),
    ]
    for seq, at in enumerate(played):
        steps.append(
            Step(
                at,
                "control",
                Played(call_sid=sid, turn=turn.turn, seq=seq, heard_text="", complete=True),
            )
        )
    return steps


def script(sid: str) -> list[Step]:
    """The whole call, in time order."""
    ev = event
    steps: list[Step] = [
        Step(
            0.0,
            "control",
            CallStarted(
                call_sid=sid,
                stream_sid="MZ" + "0" * 32,
                gateway_id="gw-test",
                parameters={"token": "secret-token"},
            ),
        ),
        Step(
            0.0,
            "events",
            ev(call_sid=sid, service="gateway", name="call.started", gateway="gw-test"),
        ),
        Step(
            0.3,
            "events",
            ev(
                call_sid=sid,
                service="agent",
                name="agent.turn_started",
                turn=0,
                kind="call_started",
            ),
        ),
        Step(
            0.4,
            "reply",
            ReplySegment(
                call_sid=sid, turn=0, seq=0, text="Hello, Test Clinic, how can I help?", last=True
            ),
        ),
        Step(
            0.6,
            "events",
            ev(call_sid=sid, service="gateway", name="turn.first_audio", turn=0, seq=0),
        ),
        Step(3.0, "control", Played(call_sid=sid, turn=0, seq=0, heard_text="", complete=True)),
    ]
    steps += _answer(sid, TURNS[0], 1, speech=(4.0, 6.0), played=[10.0, 12.5])
    # A backchannel over turn 1: paused, then resumed (a false interruption).
    steps += [
        Step(8.4, "transcript", SpeechStarted(call_sid=sid, utterance_id=2, audio_ms=0)),
        Step(
            FALSE_INTERRUPTION_AT,
            "events",
            ev(call_sid=sid, service="gateway", name="barge_in.paused", turn=1, speech_ms=120),
        ),
        Step(
            8.8,
            "transcript",
            SpeechStopped(call_sid=sid, utterance_id=2, audio_ms=0, speech_ms=300),
        ),
        Step(
            FALSE_RESUMED_AT,
            "events",
            ev(
                call_sid=sid, service="gateway", name="barge_in.reverted", turn=1, why="backchannel"
            ),
        ),
        Step(
            9.0,
            "transcript",
            Transcript(
                call_sid=sid, utterance_id=2, text="mm-hm", is_final=True, speech_ended_at=8.7
            ),
        ),
    ]
    steps += _answer(sid, TURNS[1], 3, speech=(14.0, 16.0), played=[])
    # The caller talks over turn 2 and means it: a real barge-in.
    steps += [
        Step(
            BARGE_IN_AT,
            "events",
            ev(call_sid=sid, service="gateway", name="barge_in.paused", turn=2, speech_ms=150),
        ),
        Step(BARGE_CONFIRMED_AT, "control", Interrupt(call_sid=sid, turn=2)),
        Step(
            BARGE_CONFIRMED_AT,
            "control",
            Played(call_sid=sid, turn=2, seq=0, heard_text="", complete=False),
        ),
        Step(
            BARGE_CONFIRMED_AT + 0.001,
            "events",
            ev(
                call_sid=sid,
                service="gateway",
                name="barge_in",
                turn=2,
                cleared=True,
                dropped_segments=1,
                why="words",
            ),
        ),
    ]
    steps += _answer(sid, TURNS[2], 4, speech=(19.4, 21.0), played=[23.0, 24.5])
    steps += [
        Step(KEY_AT, "control", Dtmf(call_sid=sid, digit="1")),
        Step(
            LOST_AT, "events", ev(call_sid=sid, service="gateway", name="asr.lost", worker="asr-1")
        ),
        Step(
            RECLAIMED_AT,
            "events",
            ev(
                call_sid=sid,
                service="gateway",
                name="asr.claimed",
                worker="asr-2",
                attempts=1,
                ms=400.0,
                replayed_frames=20,
                reclaim=True,
            ),
        ),
        Step(PROMPT_AT, "control", Prompt(call_sid=sid, reason="silence", silence_s=8.0)),
        Step(
            PROMPT_AT,
            "events",
            ev(call_sid=sid, service="gateway", name="prompt", reason="silence"),
        ),
        Step(
            35.3,
            "events",
            ev(call_sid=sid, service="agent", name="agent.turn_started", turn=4, kind="silence"),
        ),
        Step(
            35.4,
            "reply",
            ReplySegment(call_sid=sid, turn=4, seq=0, text="Are you still there?", last=True),
        ),
        Step(
            35.6,
            "events",
            ev(call_sid=sid, service="gateway", name="turn.first_audio", turn=4, seq=0),
        ),
        Step(37.0, "control", Played(call_sid=sid, turn=4, seq=0, heard_text="", complete=True)),
        Step(
            HANGUP_AT,
            "events",
            ev(
                call_sid=sid,
                service="gateway",
                name="call.hangup",
                reason="hangup:agent",
                after_turn=4,
            ),
        ),
        Step(ENDED_AT, "control", CallEnded(call_sid=sid, reason="hangup:agent")),
        Step(
            ENDED_AT,
            "events",
            # Built directly: the cost field is another change's (event() would redact an
            # unclassified field); the console must show it when the final event has it.
            Event(
                call_sid=sid,
                service="gateway",
                name="call.ended",
                data={"reason": "hangup:agent", "duration_s": ENDED_AT, "cost_usd": 0.0421},
            ),
        ),
    ]
    return sorted(steps, key=lambda s: s.t)


def _stamped(step: Step, t0: float, scale: float) -> bytes:
    # The script's times (seconds into the call) become wall-clock times from ``t0``.
    upd: dict[str, object] = {"at": t0 + step.t * scale}
    if isinstance(step.msg, Transcript) and step.msg.speech_ended_at is not None:
        upd["speech_ended_at"] = t0 + step.msg.speech_ended_at * scale
    return step.msg.model_copy(update=upd).to_bytes()


def subject_of(sid: str, kind: str) -> str:
    """The subject a step of ``kind`` goes to."""
    return {
        "transcript": subjects.transcript,
        "reply": subjects.reply,
        "control": subjects.control,
        "events": subjects.events,
    }[kind](sid)


async def publish(nc: NATS, sid: str, steps: list[Step], *, t0: float, scale: float = 1.0) -> None:
    """Publish ``steps`` now, each stamped as if it had happened at ``t0 + step.t * scale``."""
    for step in steps:
        await nc.publish(subject_of(sid, step.kind), _stamped(step, t0, scale))
    await nc.flush()
