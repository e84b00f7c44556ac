"""A fake OpenAI-compatible server: chat completions (streaming SSE and plain), tool calls, faults.

It speaks the real wire protocol, so the official ``openai`` SDK talks to it unchanged
(``AsyncOpenAI(base_url="http://127.0.0.1:PORT/v1")``). Its "model" is a small deterministic
script (:func:`decide`) that reads the conversation and the tools offered:

- the latest user message asks for something an offered tool does (insurance, lab results,
  booking, a human, goodbye, opening hours...): it calls that tool, with JSON arguments built
  from the tool's own parameter schema and the caller's words, streamed in several pieces;
- the latest message is a tool result: it answers in two or three sentences quoting the result;
- otherwise it answers with a few sentences of content, streamed a few words per delta.

``max_tokens`` (or ``max_completion_tokens``) is honoured: longer content is cut to that many
words and finishes with ``length``. Every request body is kept in :attr:`FakeOpenAI.requests`.

Faults, per instance (:meth:`FakeOpenAI.inject`) or by CLI flag (``--fault rate_limit:2``):
``auth`` (401), ``rate_limit`` (429 with ``Retry-After``), ``server_error`` (500), ``hang``
(accepts the request, never answers), ``cut`` (drops the connection mid-stream).

In process::

    async with FakeOpenAI(api_key="sk-test") as fake:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test")

Standalone: ``python -m devkit.fakes.openai --port 9100``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from devkit.fakes._server import LoopbackServer, add_fault_option, cli_parser, take_fault

log = logging.getLogger(__name__)

FaultKind = Literal["auth", "rate_limit", "server_error", "hang", "cut"]
FAULT_KINDS: tuple[FaultKind, ...] = ("auth", "rate_limit", "server_error", "hang", "cut")

GREETING = "Hello, thank you for calling Riverside Family Clinic. How can I help you today?"
DEFAULT_ANSWER = (
    "I can help with that. I can book appointments, check insurance coverage and look up "
    "lab results. What would you like to do?"
)
GOODBYE = "Thank you for calling Riverside Family Clinic. Have a good day. Goodbye."
TRANSFERRING = "Of course. Please hold while I transfer you to the front desk."
ASK_VERIFY = (
    "I can look that up once I have verified who you are. "
    "What is your member ID, and your date of birth?"
)
VERIFIED = "Thank you, you're verified. How can I help with your insurance or lab results?"
VERIFY_TOOL = "verify_member"

# Which offered tool a caller's words ask for, first match wins. A tool is only ever called
# when the request offers it, so the same script serves any tool set.
TOOL_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hang_up", re.compile(r"\b(good ?bye|bye|hang up|that'?s all)\b", re.I)),
    (
        "transfer",
        re.compile(
            r"\b(human|real person|operator|receptionist|transfer|front desk|"
            r"(speak|talk) (to|with) (someone|somebody|a person|staff))\b",
            re.I,
        ),
    ),
    (VERIFY_TOOL, re.compile(r"\b(date of birth|birth ?date|born|dob|verify)\b", re.I)),
    ("check_insurance", re.compile(r"\b(insurance|insured|covered|coverage)\b", re.I)),
    ("get_lab_results_status", re.compile(r"\b(lab|labs|test results|results)\b", re.I)),
    ("book_appointment", re.compile(r"\b(book|appointment|schedule|reschedule)\b", re.I)),
    ("lookup", re.compile(r"\b(hours|open|opening|close|closing|address|where|parking)\b", re.I)),
)


_ENDING_TOOLS = ("hang_up", "transfer")
# Tools a records server offers only to a verified caller: asked for before, the model asks
# the caller to verify.
_RECORD_TOOLS = ("check_insurance", "get_lab_results_status")

# ---------------------------------------------------------------- the "model"


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """One function call the fake model decided to make."""

    id: str
    name: str
    arguments: str  # JSON text, as the wire carries it


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the fake model answers: content, or tool calls (never both)."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    cut_short: bool = False  # the content hit the request's max_tokens

    @property
    def finish_reason(self) -> str:
        if self.cut_short:
            return "length"
        return "tool_calls" if self.tool_calls else "stop"


def limit_tokens(decision: Decision, max_tokens: object) -> Decision:
    """``decision`` within the request's ``max_tokens`` (the fake counts a word as a token):
    longer content is cut and finishes with ``length``, as a real server does."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return decision
    words = re.findall(r"\S+\s*", decision.content)
    if decision.tool_calls or len(words) <= max_tokens:
        return decision
    return Decision(content="".join(words[:max_tokens]).rstrip(), cut_short=True)


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _offered(tools: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn
    return out


_ID_RE = re.compile(r"\b([A-Za-z]{0,4}-?\d[\w-]*)\b")
_DAY_RE = re.compile(
    r"\b(today|tomorrow|monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b", re.I
)
_TIME_RE = re.compile(r"\b(\d{1,2}(?::\d{2})?\s?(?:am|pm|a\.m\.|p\.m\.)|\d{1,2}:\d{2})", re.I)
_PART_OF_DAY_RE = re.compile(r"\b(morning|afternoon|evening)\b", re.I)
_NAME_RE = re.compile(r"\bmy name is ([A-Za-z]+(?: [A-Za-z]+)?)", re.I)
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        "january february march april may june july august september october november "
        "december".split()
    )
}
_BIRTH_RES = (
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), "ymd"),
    (re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"), "mdy"),
    # Recognizers punctuate spoken dates freely ("January 15? 1990."): any of ,.? may follow.
    (re.compile(r"\b([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?[,.?]?\s+(\d{4})\b", re.I), "Mdy"),
    (
        re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?([a-z]+)[,.?]?\s+(\d{4})\b", re.I),
        "dMy",
    ),
)


def _find_birth_date(text: str) -> dt.date | None:
    """A date in the caller's words ("born April 12, 1980", "1980-04-12", "04/12/1980")."""
    for pattern, order in _BIRTH_RES:
        for m in pattern.finditer(text):
            a, b, c = m.groups()
            try:
                if order == "ymd":
                    return dt.date(int(a), int(b), int(c))
                if order == "mdy":
                    return dt.date(int(c), int(a), int(b))
                if order == "Mdy" and a.lower() in _MONTHS:
                    return dt.date(int(c), _MONTHS[a.lower()], int(b))
                if order == "dMy" and b.lower() in _MONTHS:
                    return dt.date(int(c), _MONTHS[b.lower()], int(a))
            except ValueError:
                continue
    return None


def _find_id(noun: str, text: str) -> str | None:
    """The ID after ``noun`` ("member ID is MBR-1", "order L-5"), else the first ID-like word."""
    if noun:
        near = re.search(
            rf"\b{re.escape(noun)}\w*(?:\s+(?:id|number|no|is|was|#))*\s*:?\s*"
            r"([A-Za-z]{0,4}-?\d[\w-]*)",
            text,
            re.I,
        )
        if near:
            return near.group(1)
    found = _ID_RE.search(text)
    return found.group(1) if found else None


def _guess(name: str, schema: dict[str, Any], text: str, tool: str) -> Any:
    """A plausible value for one parameter, from its name, its schema and the caller's words."""
    kind = schema.get("type", "string")
    key = name.lower()
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        for option in schema["enum"]:
            if str(option).lower() in text.lower():
                return option
        return schema["enum"][0]
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        found = _NUMBER_RE.search(text)
        number = float(found.group()) if found else 1.0
        return int(number) if kind == "integer" else number
    if kind != "string":
        return None
    if key == "id" or key.endswith("_id"):
        return _find_id(key.removesuffix("_id"), text)
    if key == "when":
        day = _DAY_RE.search(text)
        when = _TIME_RE.search(text) or _PART_OF_DAY_RE.search(text)
        parts = [day.group(1).lower() if day else "", f"at {when.group(1)}" if when else ""]
        return " ".join(p for p in parts if p) or "tomorrow morning"
    if "birth" in key or key == "dob":
        born = _find_birth_date(text)
        return born.isoformat() if born is not None else None
    if "day" in key or "date" in key:
        day = _DAY_RE.search(text)
        return day.group(1).lower() if day else "tomorrow"
    if "time" in key:
        when = _TIME_RE.search(text) or _PART_OF_DAY_RE.search(text)
        return when.group(1) if when else "10:00"
    if "name" in key:
        who = _NAME_RE.search(text)
        return who.group(1) if who else None
    if "reason" in key:
        return "caller said goodbye" if tool == "hang_up" else "caller request"
    if key in ("to", "phone", "number", "destination"):
        return None  # never invent a phone number: the tool has its own default
    return text.strip()


def build_arguments(function: dict[str, Any], text: str) -> dict[str, Any]:
    """JSON arguments for ``function`` (an OpenAI function schema) from the caller's words."""
    params = function.get("parameters") or {}
    props: dict[str, Any] = params.get("properties") or {}
    required = set(params.get("required") or ())
    args: dict[str, Any] = {}
    for pname, pschema in props.items():
        value = _guess(pname, pschema if isinstance(pschema, dict) else {}, text, function["name"])
        if value is None and pname in required:
            value = text.strip() or "unknown"
        if value is not None:
            args[pname] = value
    return args


def _spoken_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _speakable(result: str) -> str:
    """A tool result as a sentence or two (JSON objects read out as their values, a tool
    error as an apology)."""
    if result.startswith("Tool error:"):
        return "Sorry. " + _speakable(result.removeprefix("Tool error:").strip())
    try:
        data = json.loads(result)
    except ValueError:
        data = result
    if isinstance(data, dict):
        for key in ("message", "summary", "result", "status", "answer", "text"):
            if isinstance(data.get(key), str):
                return str(data[key])
        data = ", ".join(f"{k.replace('_', ' ')} {_spoken_value(v)}" for k, v in data.items())
    text = str(data).strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _last_tool_names(messages: Sequence[dict[str, Any]]) -> list[str]:
    for message in reversed(messages):
        if message.get("role") == "assistant" and message.get("tool_calls"):
            return [str((tc.get("function") or {}).get("name", "")) for tc in message["tool_calls"]]
    return []


def _called_since_user(messages: Sequence[dict[str, Any]]) -> set[str]:
    """Names of the tools called since the latest user message."""
    called: set[str] = set()
    for message in reversed(messages):
        if message.get("role") == "user":
            break
        for tc in message.get("tool_calls") or ():
            called.add(str((tc.get("function") or {}).get("name", "")))
    return called


def _wanted(text: str, offered: dict[str, dict[str, Any]], *, skip: set[str]) -> list[str]:
    """The offered tools the caller's words ask for (an ending tool goes alone)."""
    wanted = [
        name
        for name, pattern in TOOL_RULES
        if name in offered and name not in skip and pattern.search(text)
    ]
    if wanted and wanted[0] in _ENDING_TOOLS:
        return wanted[:1]
    wanted = [name for name in wanted if name not in _ENDING_TOOLS]
    if (
        VERIFY_TOOL in offered
        and VERIFY_TOOL not in skip
        and any(name in _RECORD_TOOLS and pattern.search(text) for name, pattern in TOOL_RULES)
        and _find_birth_date(text) is not None
    ):
        # A records request holding a full date is the caller identifying, as a model reads it
        # even when the recognizer lost "birth" ("member 842, date of 1 January 15, 1990").
        wanted = [VERIFY_TOOL]
    if VERIFY_TOOL in wanted:
        return [VERIFY_TOOL]  # verify first; the lookups follow once it answered
    return wanted


def _calls(
    names: list[str], offered: dict[str, dict[str, Any]], text: str, call_ids: Iterator[int]
) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(
            id=f"call_fake{next(call_ids):06d}",
            name=name,
            arguments=json.dumps(build_arguments(offered[name], text)),
        )
        for name in names
    )  # several requests in one sentence: parallel tool calls, as real models make them


def decide(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], *, call_ids: Iterator[int]
) -> Decision:
    """The fake model: read the conversation and the offered tools, decide what to say or call."""
    if messages and messages[-1].get("role") == "tool":
        names = _last_tool_names(messages)
        if "hang_up" in names:
            return Decision(content=GOODBYE)
        if "transfer" in names:
            return Decision(content=TRANSFERRING)
        if VERIFY_TOOL in names and not _text_of(messages[-1]).startswith("Tool error:"):
            # Verified: now do what the caller asked for, with the tools offered from now on.
            users = [m for m in messages if m.get("role") == "user"]
            text = _text_of(users[-1]) if users else ""
            offered = _offered(tools)
            skip = _called_since_user(messages) | {VERIFY_TOOL}
            chained = _calls(_wanted(text, offered, skip=skip), offered, text, call_ids)
            return Decision(tool_calls=chained) if chained else Decision(content=VERIFIED)
        results = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.append(_speakable(_text_of(message)))
        said = " ".join(reversed(results))
        return Decision(
            content=f"Thanks for waiting. {said} Is there anything else I can help you with?"
        )
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        return Decision(content=GREETING)
    text = _text_of(users[-1])
    offered = _offered(tools)
    calls = _calls(_wanted(text, offered, skip=set()), offered, text, call_ids)
    if calls:
        return Decision(tool_calls=calls)
    asks_records = any(
        name in _RECORD_TOOLS and pattern.search(text) for name, pattern in TOOL_RULES
    )
    if asks_records and VERIFY_TOOL in offered:
        return Decision(content=ASK_VERIFY)  # the records tools come after verification
    return Decision(content=DEFAULT_ANSWER)


# ---------------------------------------------------------------- wire format


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _word_pieces(text: str, words: int = 3) -> list[str]:
    tokens = re.findall(r"\S+\s*", text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


def _error(status: int, message: str, kind: str, code: str | None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def _auth_error() -> JSONResponse:
    return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


class _Cut(Exception):
    """Raised inside a streaming body to drop the connection (a network cut mid-stream)."""


class _HideCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Cut)


@dataclass(kw_only=True)
class Fault:
    """A failure the fake serves to the next ``times`` chat completion requests."""

    kind: FaultKind
    times: int = 1
    retry_after_s: float = 1.0
    after_chunks: int = 4  # cut: chunks sent before the connection drops


@dataclass(kw_only=True)
class _State:
    api_key: str | None
    model: str
    chunk_delay_s: float
    hang_s: float
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))


class FakeOpenAI:
    """The fake server. ``requests`` holds every chat completion body received, in order."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        model: str = "gpt-4o-mini",
        chunk_delay_s: float = 0.002,
        hang_s: float = 300.0,
        port: int = 0,
    ) -> None:
        self._state = _State(
            api_key=api_key, model=model, chunk_delay_s=chunk_delay_s, hang_s=hang_s
        )
        self.app = self._build_app()
        self._server = LoopbackServer(app=self.app, port=port)

    # -- control from tests

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._state.requests

    def inject(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        retry_after_s: float = 1.0,
        after_chunks: int = 4,
    ) -> None:
        """Serve ``kind`` to the next ``times`` chat completion requests (-1: all of them)."""
        self._state.faults.append(
            Fault(kind=kind, times=times, retry_after_s=retry_after_s, after_chunks=after_chunks)
        )

    def clear_faults(self) -> None:
        self._state.faults.clear()

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's ``base_url`` (ends in ``/v1``)."""
        return self._server.url + "/v1"

    async def start(self) -> str:
        await self._server.start()
        return self.base_url

    async def stop(self) -> None:
        self._state.stop.set()
        await self._server.stop()

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- HTTP

    def _build_app(self) -> Starlette:
        state = self._state

        def authorized(request: Request) -> bool:
            header = request.headers.get("authorization", "")
            if not header.startswith("Bearer ") or not header[7:].strip():
                return False
            return state.api_key is None or header[7:].strip() == state.api_key

        async def models(request: Request) -> Response:
            if not authorized(request):
                return _auth_error()
            item = {"id": state.model, "object": "model", "created": 1700000000, "owned_by": "fake"}
            return JSONResponse({"object": "list", "data": [item]})

        async def completions(request: Request) -> Response:
            if not authorized(request):
                return _auth_error()
            try:
                body = await request.json()
                messages = list(body["messages"])
            except (ValueError, KeyError, TypeError):
                return _error(400, "Invalid request body.", "invalid_request_error", None)
            state.requests.append(body)
            fault = take_fault(state.faults)
            if fault is not None and fault.kind != "cut":
                return await _serve_fault(fault)
            tools = list(body.get("tools") or [])
            if body.get("tool_choice") == "none":
                tools = []
            decision = decide(messages, tools, call_ids=state.ids)
            decision = limit_tokens(
                decision, body.get("max_completion_tokens", body.get("max_tokens"))
            )
            model = str(body.get("model") or state.model)
            if body.get("stream"):
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                cut_after = fault.after_chunks if fault is not None else None
                return StreamingResponse(
                    _sse(decision, model=model, state=state, usage=usage, cut_after=cut_after),
                    media_type="text/event-stream",
                    headers={"cache-control": "no-cache"},
                )
            if fault is not None:  # a cut before any byte of a plain response
                raise _Cut()
            return JSONResponse(_completion(decision, model=model, state=state))

        async def _serve_fault(fault: Fault) -> Response:
            if fault.kind == "auth":
                return _auth_error()
            if fault.kind == "rate_limit":
                response = _error(
                    429, "Rate limit reached for requests.", "requests", "rate_limit_exceeded"
                )
                response.headers["retry-after"] = f"{fault.retry_after_s:g}"
                return response
            if fault.kind == "server_error":
                return _error(
                    500,
                    "The server had an error while processing your request.",
                    "server_error",
                    None,
                )
            # hang: accept the request and say nothing until the client gives up (or we stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stop.wait(), state.hang_s)
            return _error(504, "hung", "server_error", None)

        return Starlette(
            routes=[
                Route("/v1/models", models, methods=["GET"]),
                Route("/v1/chat/completions", completions, methods=["POST"]),
            ]
        )


def _chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None, usage: bool
) -> str:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = None
    return f"data: {json.dumps(body)}\n\n"


def _chunks(decision: Decision, *, cid: str, created: int, model: str, usage: bool) -> list[str]:
    out: list[str] = []
    if decision.tool_calls:
        for index, call in enumerate(decision.tool_calls):
            head = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            delta: dict[str, Any] = {"tool_calls": [head]}
            if index == 0:
                delta = {"role": "assistant", "content": None, **delta, "refusal": None}
            out.append(_chunk(cid, created, model, delta, None, usage))
            for piece in _pieces(call.arguments, 7):
                part = {"index": index, "function": {"arguments": piece}}
                out.append(_chunk(cid, created, model, {"tool_calls": [part]}, None, usage))
    else:
        first = {"role": "assistant", "content": "", "refusal": None}
        out.append(_chunk(cid, created, model, first, None, usage))
        for piece in _word_pieces(decision.content):
            out.append(_chunk(cid, created, model, {"content": piece}, None, usage))
    out.append(_chunk(cid, created, model, {}, decision.finish_reason, usage))
    if usage:
        words = len(decision.content.split()) + sum(
            len(c.arguments) // 4 for c in decision.tool_calls
        )
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": words,
                "total_tokens": 100 + words,
            },
        }
        out.append(f"data: {json.dumps(body)}\n\n")
    return out


async def _sse(
    decision: Decision, *, model: str, state: _State, usage: bool, cut_after: int | None
) -> AsyncIterator[str]:
    cid = f"chatcmpl-fake{next(state.ids):06d}"
    created = int(time.time())
    for n, line in enumerate(_chunks(decision, cid=cid, created=created, model=model, usage=usage)):
        if cut_after is not None and n >= cut_after:
            raise _Cut()
        yield line
        if state.chunk_delay_s:
            await asyncio.sleep(state.chunk_delay_s)
    yield "data: [DONE]\n\n"


def _completion(decision: Decision, *, model: str, state: _State) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": decision.content or None,
        "refusal": None,
    }
    if decision.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in decision.tool_calls
        ]
    words = len(decision.content.split())
    return {
        "id": f"chatcmpl-fake{next(state.ids):06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": decision.finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": words, "total_tokens": 100 + words},
    }


# ---------------------------------------------------------------- serving


logging.getLogger("uvicorn.error").addFilter(_HideCuts())


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m devkit.fakes.openai --port N [--fault KIND[:TIMES]] ...``."""
    parser = cli_parser(__doc__, port=9100)
    parser.add_argument("--api-key", default=None, help="required bearer key (default: any)")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--chunk-delay", type=float, default=0.01, help="seconds between chunks")
    add_fault_option(parser, FAULT_KINDS)
    parser.add_argument("--retry-after", type=float, default=1.0, help="rate_limit Retry-After")
    parser.add_argument("--cut-after", type=int, default=4, help="cut: chunks before the drop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = FakeOpenAI(api_key=args.api_key, model=args.model, chunk_delay_s=args.chunk_delay)
    for kind, times in args.fault:
        fake.inject(kind, times=times, retry_after_s=args.retry_after, after_chunks=args.cut_after)
    log.info("fake OpenAI on http://%s:%d/v1", args.host, args.port)
    uvicorn.run(fake.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
