"""``voiceagent bench`` arguments, and the hand-over to :mod:`benchmarks.suite`.

The parser is here so ``voiceagent --help`` works where the benchmarks are not installed (the
production image); running a bench needs them (and :mod:`devkit`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from voiceagent.devtools import missing_dev_packages

Output = Callable[[str], None]


def _steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError as e:
        raise argparse.ArgumentTypeError("steps are comma-separated integers") from e
    if not steps or steps[0] < 1:
        raise argparse.ArgumentTypeError("steps must be positive")
    return steps


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command to ``voiceagent``'s sub-parsers."""
    b: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="capacity and latency: N concurrent simulated calls against the stack",
        description="Start the stack on a private nats-server, drive N = 1, 10, 50, ... "
        "concurrent simulated Twilio calls and print a table per N (docs/performance.md).",
    )
    b.add_argument(
        "--mode",
        choices=("instant", "embedded", "both"),
        default="both",
        help="providers: cloud fakes with instant answers (our overhead), the embedded "
        "defaults (whisper, piper), or both (default)",
    )
    b.add_argument(
        "--steps",
        type=_steps,
        default=None,  # benchmarks.load.DEFAULT_STEPS (not importable where they are absent)
        metavar="N,N,...",
        help="concurrent calls per step (default 1,10,50,100,200,300,500,1000)",
    )
    b.add_argument(
        "--max-calls",
        type=int,
        default=200,
        metavar="N",
        help="instant mode: stop after this many concurrent calls (default 200; a step that "
        "breaks, with a failed call or a lost frame, stops the run sooner)",
    )
    b.add_argument(
        "--embedded-max-calls",
        type=int,
        default=10,
        metavar="N",
        help="embedded mode: stop after this many (default 10: local whisper saturates early)",
    )
    for name in ("asr", "agent", "tts"):
        b.add_argument(f"--{name}", type=int, default=2, metavar="N", help=f"{name} replicas")
    b.add_argument(
        "--soak-waves",
        type=int,
        default=None,  # benchmarks.suite.SOAK_DEFAULTS: instant 5, embedded 0
        metavar="N",
        help="after the steps: N waves of --soak-calls calls, each process's memory read after "
        "each (flat memory check; default 5 in instant mode, 0 (skip) in embedded mode; given, "
        "it applies to every mode run)",
    )
    b.add_argument(
        "--soak-calls",
        type=int,
        default=None,
        metavar="N",
        help="calls per soak wave (default 20 in instant mode, 8 in embedded mode)",
    )
    b.add_argument(
        "--keep-going", action="store_true", help="run every step even after one misses a target"
    )
    b.add_argument(
        "--no-capacity",
        action="store_true",
        help="skip the single-process figures (one ASR worker's audio intake, one gateway)",
    )
    b.add_argument(
        "--asr-calls", type=int, default=1000, metavar="N", help="calls fed to one ASR worker"
    )
    b.add_argument(
        "--gateway-calls", type=int, default=200, metavar="N", help="calls on one gateway"
    )
    b.add_argument(
        "--no-extras", action="store_true", help="skip the turn-taking / endpointing tables"
    )
    b.add_argument(
        "--only-extras", action="store_true", help="only the turn-taking / endpointing tables"
    )
    b.add_argument(
        "--ab",
        type=_settings,
        default=None,
        metavar="KEY=VALUE,...",
        help="A/B: run every step twice, first on a stack with these settings (the 'before', "
        "e.g. ASR_MIN_WINDOW_S=30), then on the defaults, and print both with their ratios",
    )
    b.add_argument(
        "--ab-rounds",
        type=int,
        default=1,
        metavar="N",
        help="with --ab: rounds per step (A B, then B A, ...); the table gives medians",
    )
    return b


def _settings(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not key.isupper():
            raise argparse.ArgumentTypeError("settings are KEY=VALUE,... (upper-case keys)")
        out[key] = value
    return out


async def run_bench_command(args: argparse.Namespace, *, out: Output) -> int:
    """Run what ``voiceagent bench`` was asked for; exit code 0 when it completed."""
    missing = missing_dev_packages("voiceagent bench", ("benchmarks", "devkit"))
    if missing:
        out(missing)
        return 2
    from benchmarks.suite import run_suite

    return await run_suite(args, out=out)
