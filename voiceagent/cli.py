"""``voiceagent``: run the stack, run one service, place a simulated call, tail the bus, demo.

voiceagent up [--asr N --agent N --tts N]     the whole stack as processes
voiceagent gateway | asr | agent | tts         one service in the foreground
voiceagent call --say "Hello" [--wav f.wav] [--dtmf 1] [--out heard.wav]
voiceagent tail CALL_SID | --all [--show-text] [--stage asr,agent] [--no-audio] [--color]
voiceagent replay CALL_SID [--stage ...]        a finished call from the event store
voiceagent calls [--since HOURS]               recent calls: duration, turns, latency
voiceagent dial +1212... --purpose reminder --param booking=...   place an outbound call
voiceagent asyncapi [--check]                  regenerate docs/asyncapi/*.yaml
voiceagent demo                                stack up, a two-turn call, stack down
voiceagent up|demo --providers cloud           Deepgram, OpenAI + MCP, ElevenLabs against fakes
voiceagent fakes                               only the provider fakes, with their env lines
voiceagent bench [--mode instant|embedded|both]  capacity and latency table (docs/performance.md)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

SERVICE_COMMANDS = ("gateway", "asr", "agent", "tts")
DEMO_SCRIPT = ("What are your opening hours?", "Thank you, goodbye.")
# --providers cloud: a question the fake model answers with the MCP server's tool.
CLOUD_DEMO_SCRIPT = (
    "Can you check the insurance for member 842, date of birth January 15, 1990?",
    "Thank you, goodbye.",
)
MIN_WORD_RECALL = 0.5  # demo: share of the caller's words the recognizer must get


def _out(line: str) -> None:
    print(line, flush=True)


class _TurnAction(argparse.Action):
    """``--say``, ``--wav`` and ``--dtmf`` append to one ordered list of caller turns."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        turns = list(getattr(namespace, "turns", None) or [])
        turns.append((self.const, str(values)))
        namespace.turns = turns


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="voiceagent",
        description="Phone voice agents on Twilio Media Streams, ASR/agent/TTS workers on NATS.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole stack (gateway, asr, agent, tts) as processes")
    for name in ("asr", "agent", "tts"):
        up.add_argument(f"--{name}", type=int, default=1, metavar="N", help=f"{name} replicas")
    up.add_argument("--port", type=int, help="gateway port (default: PORT, 8080)")
    up.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="workers serve /metrics, /healthz, /livez on N, N+1, ... (default: METRICS_PORT)",
    )
    up.add_argument("--quiet", action="store_true", help="do not print the services' logs")
    _providers_option(up)

    for name in SERVICE_COMMANDS:
        sub.add_parser(name, help=f"run the {name} service in the foreground")

    call = sub.add_parser("call", help="place a simulated Twilio call to the local gateway")
    call.add_argument(
        "--say", action=_TurnAction, const="say", metavar="TEXT", help="a caller sentence"
    )
    call.add_argument(
        "--wav", action=_TurnAction, const="wav", metavar="FILE", help="caller audio (any rate)"
    )
    call.add_argument(
        "--dtmf", action=_TurnAction, const="dtmf", metavar="DIGITS", help="caller key presses"
    )
    call.add_argument("--out", type=Path, metavar="WAV", help="save what the caller heard")
    _call_options(call)
    call.add_argument("--json", action="store_true", help="print the result as JSON at the end")

    tail = sub.add_parser("tail", help="print a call's bus traffic, one line per message")
    tail.add_argument("call_sid", nargs="?", metavar="CALL_SID")
    tail.add_argument("--all", action="store_true", help="every call (voice.>)")
    tail.add_argument("--show-text", action="store_true", help="show text and SIDs unredacted")
    tail.add_argument("--no-audio", action="store_true", help="hide audio frames and heartbeats")
    tail.add_argument("--nats-url", help="default: the running stack's, else NATS_URL")
    from voiceagent.ops_cli import add_ops_parsers, add_tail_options

    add_tail_options(tail)
    add_ops_parsers(sub)
    from voiceagent.security_cli import add_security_parsers

    add_security_parsers(sub)

    demo = sub.add_parser("demo", help="stack up, one scripted two-turn call, stack down")
    demo.add_argument("--out", type=Path, metavar="WAV", help="save what the caller heard")
    demo.add_argument("--verbose", action="store_true", help="print the services' logs")
    demo.add_argument("--timeout", type=float, default=300.0, help="readiness timeout (s)")
    _providers_option(demo)

    fakes = sub.add_parser(
        "fakes", help="run the cloud provider fakes (Deepgram, OpenAI, MCP, ElevenLabs) only"
    )
    fakes.add_argument("--api-key", default="fake-key", help="the key the fakes accept")
    fakes.add_argument("--quiet", action="store_true", help="do not print the fakes' logs")

    from voiceagent.bench_cli import add_bench_parser

    add_bench_parser(sub)
    from voiceagent.dial import add_dial_parser

    add_dial_parser(sub)
    return p


def _providers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--providers",
        choices=("auto", "local", "cloud"),
        default="auto",
        help="auto: as *_PROVIDER say; local: embedded; cloud: Deepgram, OpenAI + MCP and "
        "ElevenLabs against local fakes of their APIs (started here)",
    )


def _call_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", metavar="URL", help="local gateway base URL")
    p.add_argument("--public-url", metavar="URL", help="PUBLIC_URL the gateway checks against")
    p.add_argument("--token", help="Twilio auth token to sign with (default TWILIO_AUTH_TOKEN)")
    p.add_argument("--call-sid", default="", help="CallSid to use (default: a new one)")
    p.add_argument("--from", dest="from_number", default="+15555550100", help="caller number")
    p.add_argument("--to", dest="to_number", default="+15555550199", help="called number")
    p.add_argument("--nats-url", help="where to read transcripts/replies (default NATS_URL)")
    p.add_argument("--no-bus", action="store_true", help="do not read text from NATS")
    p.add_argument("--greeting-timeout", type=float, default=20.0, metavar="S")
    p.add_argument("--reply-timeout", type=float, default=30.0, metavar="S")
    p.add_argument(
        "--quiet-s",
        type=float,
        default=1.5,
        metavar="S",
        help="silence after which a reply counts as finished",
    )


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro``; SIGINT/SIGTERM cancel it (so ``finally`` blocks stop child processes)."""

    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await coro
        except asyncio.CancelledError:
            return 130

    return asyncio.run(main())


# ---------------------------------------------------------------- up


def console_url(info: Any) -> str:
    """The web console's address; a single admin token rides in the fragment (never sent)."""
    url = f"{info.gateway_url}/console"
    token = getattr(info, "admin_token", "")
    if token and "," not in token and ":" not in token:  # name:token pairs: the page asks
        url += "#token=" + quote(token, safe="")  # base64's + / = survive decodeURIComponent
    return url


def _banner(info: Any, *, stack: Any, counts: tuple[int, int, int]) -> list[str]:
    nats = info.nats_url + ("  (started here)" if stack.started_nats else "")
    redis = info.redis_url or "none: conversation memory in process"
    cloud = getattr(stack, "cloud", None)
    providers = ["  providers   cloud, against local fakes:", *cloud.describe()] if cloud else []
    say = CLOUD_DEMO_SCRIPT[0] if cloud else DEMO_SCRIPT[0]
    return [
        "",
        "voiceagent is up.",
        f"  gateway     {info.gateway_url}   (POST /voice, WS /twilio-stream, GET /healthz)",
        f"  public URL  {info.public_url}   (Twilio voice webhook: {info.public_url}/voice)",
        f"  NATS        {nats}",
        f"  Redis       {redis}",
        f"  workers     asr x{counts[0]}, agent x{counts[1]}, tts x{counts[2]}",
        f"  console     {console_url(info)}",
        "               (live calls and transcripts; the Call button talks to the agent)",
        *providers,
        "",
        f'Place a call:   voiceagent call --say "{say}" --out heard.wav',
        "Watch the bus:  voiceagent tail --all --no-audio",
        "Ctrl-C stops everything.",
        "",
    ]


async def _up(args: argparse.Namespace) -> int:
    from voiceagent.stack import Stack, clear_state, write_state

    env = {"PORT": str(args.port)} if args.port else {}
    if getattr(args, "metrics_port", None):
        env["METRICS_PORT"] = str(args.metrics_port)
    counts = (args.asr, args.agent, args.tts)
    if min(counts) < 1:
        _out("each of --asr, --agent, --tts needs at least 1")
        return 2
    stack = Stack(
        asr=args.asr,
        agent=args.agent,
        tts=args.tts,
        env=env,
        output=_out,
        service_output=None if args.quiet else _out,
        providers=args.providers,
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        try:
            info = await stack.start()
        except (TimeoutError, RuntimeError) as e:  # nats-server or a provider fake did not start
            _out(f"cannot start the stack: {e}")
            for line in stack.recent_output()[-20:]:
                _out("  " + line)
            return 1
        _out(f"starting gateway on {info.gateway_url} and {sum(counts)} workers ...")
        ready = asyncio.create_task(stack.wait_ready(timeout_s=600, progress=_out))
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait({ready, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            if ready.exception() is not None:
                _out(f"stack not ready: {ready.exception()}")
            else:
                write_state(
                    {
                        "gateway_url": info.gateway_url,
                        "public_url": info.public_url,
                        "nats_url": info.nats_url,
                        "auth_token": info.auth_token,
                        "account_sid": info.account_sid,
                    }
                )
                for line in _banner(info, stack=stack, counts=counts):
                    _out(line)
        await stopping.wait()
        ready.cancel()
        stop_wait.cancel()
    finally:
        _out("stopping (services drain; Ctrl-C again to kill) ...")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            loop.add_signal_handler(sig, stack.kill)
        await stack.stop()
        clear_state()
        _out("stopped.")
    return 0


# ---------------------------------------------------------------- call


def _call_target(args: argparse.Namespace) -> dict[str, str]:
    from shared.settings import Settings
    from voiceagent.stack import read_state

    s = Settings()
    state = read_state()
    token = args.token or s.twilio_auth_token.get_secret_value() or state.get("auth_token", "")
    return {
        "gateway_url": args.gateway or state.get("gateway_url") or f"http://127.0.0.1:{s.port}",
        "public_url": args.public_url or state.get("public_url") or s.public_url,
        "auth_token": token,
        "account_sid": s.twilio_account_sid or state.get("account_sid", ""),
        "nats_url": "" if args.no_bus else (args.nats_url or state.get("nats_url") or s.nats_url),
    }


def result_summary(result: Any) -> dict[str, Any]:
    """A JSON-able summary of a :class:`~devkit.simulator.CallResult`."""
    return {
        "call_sid": result.call_sid,
        "stream_sid": result.stream_sid,
        "ended_by": result.ended_by,
        "turns": [
            {
                "caller": t.caller,
                "kind": t.kind,
                "recognized": t.recognized_text,
                "agent": t.agent_text,
                "latency_ms": None if t.latency_ms is None else round(t.latency_ms),
                "reply_ms": round(t.reply_ms),
                "talked_over_ms": round(t.talked_over_ms),
                "finished": t.finished,
                "marks": t.marks,
            }
            for t in result.exchanges
        ],
        "marks_echoed": len(result.marks_echoed),
        "clears": result.clears,
        "protocol_errors": result.protocol_errors,
        "warnings": result.warnings,
    }


async def _place(
    turns: Sequence[Any], target: dict[str, str], args: argparse.Namespace, out: Path | None
) -> Any:
    from devkit.simulator import place_call

    _out(f"calling {target['gateway_url']} (as Twilio for {target['public_url']}/voice)")
    result = await place_call(
        turns,
        gateway_url=target["gateway_url"],
        public_url=target["public_url"],
        auth_token=target["auth_token"],
        account_sid=target["account_sid"],
        nats_url=target["nats_url"] or None,
        call_sid=getattr(args, "call_sid", ""),
        from_number=getattr(args, "from_number", "+15555550100"),
        to_number=getattr(args, "to_number", "+15555550199"),
        greeting_timeout_s=getattr(args, "greeting_timeout", 20.0),
        reply_timeout_s=getattr(args, "reply_timeout", 30.0),
        quiet_s=getattr(args, "quiet_s", 1.5),
        on_line=_out,
    )
    for w in result.warnings:
        _out(f"note: {w}")
    if result.ended_by == "rejected":
        _out(f"call {result.call_sid} was rejected")
        return result
    lat = ", ".join(f"{x:.0f}" for x in result.latencies_ms) or "-"
    _out(
        f"call {result.call_sid} ended by {result.ended_by}: latency ms [{lat}], "
        f"{len(result.marks_echoed)} marks echoed, {result.clears} clears, "
        f"{len(result.protocol_errors)} protocol errors"
    )
    if out is not None and result.heard:
        result.save_heard(out)
        _out(f"what the caller heard: {out} ({len(result.heard) / 8000:.1f} s, 8 kHz 16-bit)")
    return result


async def _call(args: argparse.Namespace) -> int:
    from devkit.simulator import CallerTurn
    from devkit.voices import VoiceUnavailable

    turns = [CallerTurn(kind=k, value=v) for k, v in (getattr(args, "turns", None) or [])]
    target = _call_target(args)
    if not target["auth_token"]:
        _out("no auth token: set TWILIO_AUTH_TOKEN (as the gateway has it) or --token")
        return 2
    try:
        result = await _place(turns, target, args, args.out)
    except (VoiceUnavailable, OSError) as e:
        _out(f"cannot prepare the caller's audio: {e}")
        return 2
    if args.json:
        _out(json.dumps(result_summary(result), indent=2))
    failed = result.ended_by == "rejected" or result.protocol_errors
    unanswered = [t for t in result.turns if t.first_audio_at is None and t.kind != "dtmf"]
    return 1 if failed or unanswered else 0


# ---------------------------------------------------------------- tail


async def _tail(args: argparse.Namespace) -> int:
    from shared.settings import Settings
    from voiceagent.ops_cli import tail_options
    from voiceagent.stack import nats_reachable, read_state
    from voiceagent.tail import run_tail

    if not args.all and not args.call_sid:
        _out("give a CALL_SID or --all")
        return 2
    try:
        opts = tail_options(args, with_call=args.all)
    except ValueError as e:
        _out(str(e))
        return 2
    url = args.nats_url or read_state().get("nats_url") or Settings().nats_url
    try:
        up = nats_reachable(url, timeout=2)
    except ValueError as e:
        _out(str(e))
        return 2
    if not up:
        _out(f"NATS is not reachable at {url}: is the stack up? (voiceagent up)")
        return 1
    shown = await run_tail(
        nats_url=url,
        call_sid=None if args.all else args.call_sid,
        show_text=args.show_text,
        audio=not args.no_audio,
        stages=opts.stages,
        color=opts.color,
        out=_out,
    )
    return 0 if shown else 1


# ---------------------------------------------------------------- demo


def demo_failures(result: Any, script: Sequence[str]) -> list[str]:
    """Why a demo call failed (empty when the caller was understood and answered)."""
    from devkit.simulator import word_recall

    problems = list(result.protocol_errors)
    if result.ended_by == "rejected":
        problems.append("the gateway rejected the call")
    for said, turn in zip(script, result.turns, strict=False):
        recall = word_recall(said, turn.recognized_text)
        if recall < MIN_WORD_RECALL:
            problems.append(f"caller words not recognized: {said!r} -> {turn.recognized_text!r}")
        if turn.first_audio_at is None:
            problems.append(f"no reply heard after {said!r}")
    if len(result.turns) < len(script):
        problems.append(f"call ended after {len(result.turns)} of {len(script)} caller turns")
    return problems


async def _demo(args: argparse.Namespace) -> int:
    from devkit.simulator import say
    from voiceagent.ports import free_port
    from voiceagent.stack import Stack

    port = free_port()
    env = {"PORT": str(port), "PUBLIC_URL": f"http://127.0.0.1:{port}", "HOST": "127.0.0.1"}
    stack = Stack(
        env=env,
        output=_out,
        service_output=_out if args.verbose else None,
        providers=args.providers,
    )
    problems: list[str] = []
    try:
        info = await stack.start()
        _out(f"demo: starting the stack (gateway {info.gateway_url}) ...")
        await stack.wait_ready(timeout_s=args.timeout, progress=_out)
        _out("demo: stack ready; placing a call\n")
        target = {
            "gateway_url": info.gateway_url,
            "public_url": info.public_url,
            "auth_token": info.auth_token,
            "account_sid": info.account_sid,
            "nats_url": info.nats_url,
        }
        script = CLOUD_DEMO_SCRIPT if args.providers == "cloud" else DEMO_SCRIPT
        result = await _place([say(t) for t in script], target, args, args.out)
        problems = demo_failures(result, script)
    except TimeoutError as e:
        problems = [str(e)]
    finally:
        _out("\ndemo: stopping the stack ...")
        await stack.stop()
    if problems:
        if stack.supervisor is not None and not args.verbose:
            _out("last service log lines:")
            for line in stack.recent_output()[-40:]:
                _out("  " + line)
        for p in problems:
            _out(f"demo FAILED: {p}")
        return 1
    _out("demo OK: the caller was understood and answered.")
    return 0


# ---------------------------------------------------------------- fakes


async def _fakes(args: argparse.Namespace) -> int:
    from voiceagent.cloud import plan_cloud, preferred_ports
    from voiceagent.ports import wait_listening
    from voiceagent.supervisor import Supervisor

    plan = plan_cloud(ports=preferred_ports(), api_key=args.api_key)
    sup = Supervisor(specs=plan.specs, output=None if args.quiet else _out, events=_out)
    await sup.start()
    try:
        try:
            await wait_listening(plan.ports, what="fakes")
        except TimeoutError as e:
            _out(f"fakes not ready: {e}")
            for line in sup.recent_output()[-20:]:
                _out("  " + line)
            return 1
        _out("\nprovider fakes are up:")
        for line in plan.describe():
            _out(line)
        _out("\nPoint the services at them (environment or .env):\n")
        for line in plan.env_lines():
            _out(line)
        _out("\nCtrl-C stops them.")
        with contextlib.suppress(asyncio.CancelledError):  # Ctrl-C / SIGTERM: a clean stop
            await asyncio.Event().wait()
    finally:
        await sup.stop()
    return 0


# ---------------------------------------------------------------- entry point


# Commands that run the call simulator or the provider fakes (devkit, not in the image).
DEVKIT_COMMANDS = ("call", "demo", "fakes")


def _missing_devkit(args: argparse.Namespace) -> str | None:
    """The line saying ``args``' command needs devkit and it is absent here, else None."""
    from voiceagent.devtools import missing_dev_packages

    if args.command in DEVKIT_COMMANDS:
        return missing_dev_packages(f"voiceagent {args.command}")
    if args.command == "up" and args.providers == "cloud":
        return missing_dev_packages("voiceagent up --providers cloud")
    return None  # bench checks for itself (it needs the benchmarks too)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``voiceagent``."""
    args = build_parser().parse_args(argv)
    cmd = args.command
    missing = _missing_devkit(args)
    if missing:
        _out(missing)
        sys.exit(2)
    if cmd in SERVICE_COMMANDS:
        module = f"services.{cmd}"
        os.execv(sys.executable, [sys.executable, "-m", module])
    if cmd == "up":
        code = asyncio.run(_up(args))  # handles its own signals: first drains, second kills
    elif cmd == "call":
        code = _run(_call(args))
    elif cmd == "tail":
        code = _run(_tail(args))
    elif cmd in ("replay", "calls", "asyncapi"):
        from voiceagent import ops_cli

        if cmd == "asyncapi":
            code = ops_cli.run_asyncapi(args, out=_out)
        else:
            run = ops_cli.run_replay if cmd == "replay" else ops_cli.run_calls
            code = _run(run(args, out=_out))
    elif cmd == "fakes":
        code = _run(_fakes(args))
    elif cmd == "dial":
        from voiceagent.dial import run_dial

        code = _run(run_dial(args, out=_out))
    elif cmd in ("audit", "purge-recordings"):
        from voiceagent import security_cli

        if cmd == "audit":
            code = _run(security_cli.run_audit(args, out=_out))
        else:
            code = security_cli.run_purge(_out)
    elif cmd == "bench":
        from voiceagent.bench_cli import run_bench_command

        code = _run(run_bench_command(args, out=_out))
    else:
        code = _run(_demo(args))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
