"""``voiceagent bench``: the whole run (single-process figures, stack tables, extra tables).

The arguments are parsed by :mod:`voiceagent.bench_cli`; this runs them.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import time
from collections.abc import Callable
from typing import Any

Output = Callable[[str], None]

# Benchmarks other modules contribute: each module's ``run_bench`` is called when present.
EXTRA_BENCHES = ("benchmarks.turntaking", "benchmarks.endpointing")

# The soak (waves, calls per wave) when ``--soak-waves`` / ``--soak-calls`` are not given.
# Embedded: off. A wave of 8 callers took ~50 s on the 2-core machine (whisper), so a soak long
# enough to tell (6-8 waves) would add 5-7 minutes to ``make bench``'s ~8; ask with --soak-waves.
SOAK_DEFAULTS: dict[str, tuple[int, int]] = {"instant": (5, 20), "embedded": (0, 8)}


def soak_for(args: argparse.Namespace, mode: str) -> tuple[int, int]:
    """(waves, calls per wave) of ``mode``'s soak: the flags when given, else its defaults."""
    waves, calls = SOAK_DEFAULTS[mode]
    if args.soak_waves is not None:
        waves = args.soak_waves
    if args.soak_calls is not None:
        calls = args.soak_calls
    return waves, calls


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

    from benchmarks.load import BenchOptions, ab_table, run_bench, steps_for

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


async def run_suite(args: argparse.Namespace, *, out: Output) -> int:
    """Run what ``voiceagent bench`` was asked for (its parsed arguments); 0 when it completed."""
    from benchmarks.load import DEFAULT_STEPS, BenchOptions, Mode, run_bench

    if args.steps is None:
        args.steps = DEFAULT_STEPS

    began = time.monotonic()
    modes: tuple[Mode, ...] = ("instant", "embedded") if args.mode == "both" else (args.mode,)
    mode: Mode
    if getattr(args, "only_extras", False):  # the turn-taking tables alone
        args.no_capacity, modes = True, ()
    if not args.no_capacity:
        # First, while this process is fresh: its load generators must keep real time.
        from benchmarks.capacity import asr_intake, gateway_capacity

        out("\n=== bench: one ASR worker's audio intake (recognizer excluded) ===")
        out((await asr_intake(calls=args.asr_calls, out=out)).describe())
        out("\n=== bench: one gateway process, one core ===")
        out((await gateway_capacity(calls=args.gateway_calls, out=out)).describe())
    for mode in modes:
        if args.ab:
            await _run_ab(args, mode, out=out)
            continue
        cap = args.max_calls if mode == "instant" else args.embedded_max_calls
        soak_waves, soak_calls = soak_for(args, mode)
        opts = BenchOptions(
            mode=mode,
            steps=args.steps,
            max_calls=cap,
            asr=args.asr,
            agent=args.agent,
            tts=args.tts,
            keep_going=args.keep_going,
            soak_waves=soak_waves,
            soak_calls=soak_calls,
        )
        out(f"\n=== bench: {mode} providers, up to {cap} concurrent calls ===")
        await run_bench(opts, out=out)
    if not args.no_extras:
        for module in EXTRA_BENCHES:
            out(f"\n=== bench: {module.rsplit('.', 1)[-1]} ===")
            await _extra(module, out)
    out(f"\nbench: done in {time.monotonic() - began:.0f} s")
    return 0
