"""``voiceagent`` arguments: caller turns keep their order; stack specs; demo verdict."""

from __future__ import annotations

import sys

import pytest

from devkit.simulator import CallResult, TurnResult
from voiceagent.cli import DEMO_SCRIPT, build_parser, demo_failures
from voiceagent.stack import service_specs


def test_call_turns_keep_command_line_order() -> None:
    args = build_parser().parse_args(
        [
            "call",
            "--say",
            "Hello",
            "--dtmf",
            "1",
            "--wav",
            "a.wav",
            "--say",
            "Bye",
            "--out",
            "h.wav",
        ]
    )
    assert args.turns == [("say", "Hello"), ("dtmf", "1"), ("wav", "a.wav"), ("say", "Bye")]
    assert str(args.out) == "h.wav"


def test_up_replicas_default_to_one() -> None:
    args = build_parser().parse_args(["up", "--asr", "2"])
    assert (args.asr, args.agent, args.tts) == (2, 1, 1)


def test_unknown_command_is_refused() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dance"])


def test_stack_runs_each_replica_as_its_own_module_process() -> None:
    specs = service_specs(asr=2, agent=1, tts=3, env={"METRICS_PORT": "9100", "X": "1"})
    names = [s.name for s in specs]
    assert names == ["gateway", "asr-1", "asr-2", "agent-1", "tts-1", "tts-2", "tts-3"]
    assert specs[1].argv == [sys.executable, "-m", "services.asr"]
    ports = [s.env["METRICS_PORT"] for s in specs]
    assert ports == ["0", "9100", "9101", "9102", "9103", "9104", "9105"]  # no two share one
    assert all(s.env["X"] == "1" for s in specs)


def _result(recognized: list[str], replied: list[bool]) -> CallResult:
    r = CallResult(call_sid="CA1", account_sid="AC1")
    for said, heard, ok in zip(DEMO_SCRIPT, recognized, replied, strict=True):
        t = TurnResult(caller=said, kind="say", recognized=[heard])
        t.first_audio_at = 1.0 if ok else None
        r.turns.append(t)
    return r


def test_demo_passes_only_when_words_are_recognized_and_answered() -> None:
    good = _result(["what are your opening hours", "thank you goodbye"], [True, True])
    assert demo_failures(good, DEMO_SCRIPT) == []
    misheard = _result(["what is the weather", "thank you goodbye"], [True, True])
    assert any("not recognized" in p for p in demo_failures(misheard, DEMO_SCRIPT))
    silent = _result(["what are your opening hours", "thank you goodbye"], [True, False])
    assert any("no reply" in p for p in demo_failures(silent, DEMO_SCRIPT))
    short = CallResult(call_sid="CA1", account_sid="AC1")  # the gateway hung up at once
    assert any("ended after 0" in p for p in demo_failures(short, DEMO_SCRIPT))
