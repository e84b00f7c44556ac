"""``voiceagent bench`` arguments and dispatch (kept out of :mod:`voiceagent.cli`)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import time
from collections.abc import Callable
from typing import Any

Output = Callable[[str], None]

# Benchmarks other modules contribute: each module's ``run_bench`` is called when present.
EXTRA_BENCHES = ("voiceagent.bench_turntaking", "voiceagent.bench_endpointing")


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
    from voiceagent.bench import DEFAULT_STEPS

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
        default=DEFAULT_STEPS,
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
        default=5,
        metavar="N",
        help="instant mode, after the steps: N waves of --soak-calls calls, each service's "
        "memory sampled after each (flat memory check; 0: skip)",
    )
    b.add_argument("--soak-calls", type=int, default=20, metavar="N", help="calls per soak wave")
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


async def _extra(module: str, out: Output) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        out(f"bench: {module} is not available here: its table is skipped")
        return
    fn = getattr(mod, "run_bench", None)
    if fn is None:
        out(f"bench: {module} has no run_bench(): its table is skipped")
        return
    params = inspect.signature(fn).parameters
    result = fn(out=out) if "out" in params else fn()
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, str):
        out(result)


async def _run_ab(args: argparse.Namespace, mode: Any, *, out: Output) -> None:
    """Each step on a stack with ``--ab``'s settings and on the defaults, interleaved (a busy
    machine's load drifts: both variants of a step run minutes apart at most)."""
    from dataclasses import replace

    from voiceagent.bench import BenchOptions, ab_table, run_bench, steps_for

    cap = args.max_calls if mode == "instant" else args.embedded_max_calls
    base = BenchOptions(
        mode=mode,
        steps=args.steps,
        max_calls=cap,
        asr=args.asr,
        agent=args.agent,
        tts=args.tts,
        keep_going=True,
    )
    before = ",".join(f"{k}={v}" for k, v in args.ab.items())
    variants = [(dict(args.ab), f"before ({before})"), ({}, "defaults")]
    rows = []
    for n in steps_for(base):
        for r in range(max(1, args.ab_rounds)):
            for env, label in variants if r % 2 == 0 else variants[::-1]:
                out(f"\n=== bench A/B: {mode}, N={n}, {label}, round {r + 1} ===")
                opts = replace(base, steps=(n,), max_calls=n, env=env, label=label)
                rows += await run_bench(opts, out=out)
    out(f"\n=== bench A/B: {mode} ===")
    out(ab_table(rows, before=variants[0][1], after=variants[1][1]))


async def run_bench_command(args: argparse.Namespace, *, out: Output) -> int:
    """Run what ``voiceagent bench`` was asked for; exit code 0 when it completed."""
    from voiceagent.bench import BenchOptions, Mode, run_bench

    began = time.monotonic()
    modes: tuple[Mode, ...] = ("instant", "embedded") if args.mode == "both" else (args.mode,)
    mode: Mode
    if not args.no_capacity:
        # First, while this process is fresh: its load generators must keep real time.
        from voiceagent.bench_capacity import asr_intake, gateway_capacity

        out("\n=== bench: one ASR worker's audio intake (recognizer excluded) ===")
        out((await asr_intake(calls=args.asr_calls, out=out)).describe())
        out("\n=== bench: one gateway process, one core ===")
        out((await gateway_capacity(calls=args.gateway_calls, out=out)).describe())
    for mode in modes:
        if args.ab:
            await _run_ab(args, mode, out=out)
            continue
        cap = args.max_calls if mode == "instant" else args.embedded_max_calls
        opts = BenchOptions(
            mode=mode,
            steps=args.steps,
            max_calls=cap,
            asr=args.asr,
            agent=args.agent,
            tts=args.tts,
            keep_going=args.keep_going,
            soak_waves=args.soak_waves if mode == "instant" else 0,
            soak_calls=args.soak_calls,
        )
        out(f"\n=== bench: {mode} providers, up to {cap} concurrent calls ===")
        await run_bench(opts, out=out)
    if not args.no_extras:
        for module in EXTRA_BENCHES:
            out(f"\n=== bench: {module.rsplit('_', 1)[-1]} ===")
            await _extra(module, out)
    out(f"\nbench: done in {time.monotonic() - began:.0f} s")
    return 0
