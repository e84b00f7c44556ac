"""OpenAI chat-completions agent with tools: the built-in call tools plus every MCP tool.

Any OpenAI-compatible server works through ``OPENAI_BASE_URL`` (vLLM, llama.cpp server,
Ollama). The SDK's own retries are off (``max_retries=0``): our policy (:mod:`shared.backoff`)
retries a round until its first output, inside the provider deadline, and honours
``Retry-After``; once text has been spoken a failure propagates and the worker speaks its
fallback.

A turn is a loop of streamed rounds: content deltas are yielded as they arrive (the worker
cuts sentences); tool-call deltas are accumulated by index; when the model asks for tools they
run (built-ins here, MCP tools through :class:`PhiTools`: its PHI tools only for a caller
verified in this call), the assistant message and each tool
result are yielded as :class:`HistoryItem` (the worker stores them) and appended to the
conversation, and the next round starts. At most :data:`MAX_TOOL_ROUNDS` rounds call tools; the
last one forbids tools so the model has to answer.

Cost bounds: every completion carries ``max_tokens`` (``OPENAI_MAX_TOKENS``) and the history
sent is cut to ``AGENT_HISTORY_MAX_TOKENS`` estimated tokens (:func:`within_budget`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import openai
from openai import AsyncOpenAI, omit

from services.agent import outbound_script
from services.agent.digits import caller_input_text
from services.agent.fixed_prompts import fixed_reply, is_fixed, sentences_of
from services.agent.history import within_budget
from services.agent.providers.base import (
    AgentOutput,
    AgentProvider,
    HangupAction,
    HistoryItem,
    TransferAction,
    TurnInput,
    UsageReport,
)
from services.agent.tools import CallTools
from services.agent.verification import PhiTools, VerifiedMember, verified_note
from shared.backoff import stream_with_retries
from shared.errors import ProviderAuthError, ProviderError, ProviderTimeout
from shared.logging import kv
from shared.metrics import PROVIDER_ERRORS, STAGE_LATENCY
from shared.settings import Settings

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolUnionParam

    from services.agent.mcp_tools import McpTools

log = logging.getLogger(__name__)

PROVIDER = "openai"
SERVICE = "agent"
MAX_TOOL_ROUNDS = 4
DEFAULT_PROMPT_FILE = Path(__file__).resolve().parents[1] / "prompts" / "AGENTS.md"
_RETRYABLE_STATUS = frozenset({408, 409, 429})

# What the model is told when the turn is not a caller utterance (the kinds of TurnInput).
_EVENT_NOTES = {
    "call_started": "The call has just connected. Greet the caller and ask how you can help.",
    "silence": "The caller has been silent for a while. Ask briefly whether they are still there.",
    "call_limit": "The call has reached its time limit. Say a short goodbye and end the call.",
}


def load_prompt(path: Path | None) -> str:
    """The system prompt: the persona file (``AGENT_PROMPT_FILE``), else the bundled one."""
    return (path or DEFAULT_PROMPT_FILE).read_text(encoding="utf-8").strip()


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    return None


def wrap_error(e: Exception) -> ProviderError:
    """An ``openai`` SDK error as one of our :class:`ProviderError` types."""
    if isinstance(e, ProviderError):
        return e
    if isinstance(e, openai.APITimeoutError):
        return ProviderTimeout("openai request timed out", provider=PROVIDER)
    if isinstance(e, openai.APIConnectionError):
        return ProviderError("openai connection failed", provider=PROVIDER, retryable=True)
    if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
        return ProviderAuthError(
            f"openai refused the credentials ({e.status_code})",
            provider=PROVIDER,
            status=e.status_code,
        )
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        return ProviderError(
            f"openai answered {status}",
            provider=PROVIDER,
            retryable=status in _RETRYABLE_STATUS or status >= 500,
            retry_after=_retry_after(e.response.headers),
            status=status,
        )
    return ProviderError(f"openai failed: {type(e).__name__}", provider=PROVIDER, retryable=False)


@dataclass
class _ToolCall:
    """A tool call being assembled from streamed deltas."""

    id: str = ""
    name: str = ""
    arguments: str = ""

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class _Calls:
    """End of a round that asked for tools (yielded after the round's content)."""

    calls: list[_ToolCall] = field(default_factory=list)


def turn_messages(
    turn: TurnInput, *, system_prompt: str, history_max_tokens: int = 0
) -> list[dict[str, Any]]:
    """The chat-completions conversation for ``turn``: persona, history, the new input.

    History beyond ``history_max_tokens`` (estimated, :func:`within_budget`; 0: no limit)
    loses its oldest messages; the persona and the new input always go.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    if turn.outbound is not None:
        messages.append({"role": "system", "content": outbound_script.system_note(turn.outbound)})
    messages.extend(within_budget(turn.history, history_max_tokens))
    if turn.kind in ("dtmf", "digits") or (turn.kind == "utterance" and turn.text):
        content = caller_input_text(turn.kind, turn.text, turn.keys)
        messages.append({"role": "user", "content": content})
    elif turn.kind in _EVENT_NOTES:
        messages.append({"role": "system", "content": _EVENT_NOTES[turn.kind]})
    return messages


class OpenAIAgent(AgentProvider):
    """Streams replies from an OpenAI-compatible chat-completions endpoint, with tools."""

    name = PROVIDER

    def __init__(self, *, settings: Settings, tools: CallTools, mcp: McpTools | None) -> None:
        key = settings.openai_api_key.get_secret_value()
        if not key and not settings.openai_base_url:
            raise ProviderAuthError("OPENAI_API_KEY is not set", provider=PROVIDER)
        self._settings = settings
        self._tools = tools
        # MCP tools read PHI: offered and run only for a caller verified in the call.
        self._phi = (
            PhiTools.from_settings(settings, mcp=mcp, store=tools.store)
            if mcp is not None
            else None
        )
        self._model = settings.openai_model
        self._system_prompt = load_prompt(settings.agent_prompt_file)
        self._greeting = settings.agent_greeting.strip()
        self._fixed = sentences_of(self._greeting) if self._greeting else frozenset()
        self._client = AsyncOpenAI(
            base_url=settings.openai_base_url or None,
            # Local OpenAI-compatible servers often need no key; the SDK insists on one.
            api_key=key or "unused",
            timeout=settings.provider_timeout_s,
            max_retries=0,
        )

    # -- lifecycle

    async def warm_up(self) -> None:
        """One tiny request with the real prompt prefix: opens the connection pool, loads the
        model on local servers and primes prompt caches. Failures are logged, never fatal."""
        started = time.perf_counter()
        tools = self.tool_schemas()
        try:
            await self._client.chat.completions.create(
                model=self._model,
                messages=[
                    {"role": "system", "content": self._system_prompt},
                    {"role": "user", "content": "Say OK."},
                ],
                # Same tools as real turns: they are part of the cached prompt prefix.
                tools=cast("list[ChatCompletionToolUnionParam]", tools) if tools else omit,
                max_tokens=min(self._settings.openai_max_tokens, 16),
                timeout=self._settings.provider_timeout_s,
            )
        except Exception as e:
            err = wrap_error(e)
            log.warning(
                "openai warm-up failed; continuing",
                **kv(error=str(err), status=err.status, base_url=self._base_url_label()),
            )
            return
        log.info(
            "openai warm-up done",
            **kv(
                model=self._model,
                ms=round((time.perf_counter() - started) * 1000),
                base_url=self._base_url_label(),
            ),
        )

    async def aclose(self) -> None:
        await self._client.close()

    def _base_url_label(self) -> str:
        return self._settings.openai_base_url or "api.openai.com"

    def cacheable(self, sentence: str) -> bool:
        """The fixed greeting and prompts (never model output: it may carry caller data)."""
        return sentence in self._fixed or is_fixed(sentence)

    # -- tools

    def tool_schemas(self, verified: VerifiedMember | None = None) -> list[dict[str, Any]]:
        """The tools offered to the model: built-ins first, then the MCP server's verification
        tool, or, once the caller is ``verified`` in this call, its PHI tools."""
        schemas = list(self._tools.schemas())
        if self._phi is not None:
            schemas.extend(self._phi.schemas(verified))
        return schemas

    async def _verified(self, call_sid: str) -> VerifiedMember | None:
        return await self._phi.verified(call_sid) if self._phi is not None else None

    async def _run_tool(
        self, call: _ToolCall, turn: TurnInput
    ) -> tuple[str, HangupAction | TransferAction | None]:
        """Execute one tool call: the text result for the model, and any call action."""
        try:
            args = json.loads(call.arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments are not an object")
        except ValueError:
            return "Tool error: the arguments were not valid JSON.", None
        if self._tools.has(call.name):
            outcome = await self._tools.run(call.name, args, call_sid=turn.call_sid)
            return outcome.text, outcome.action
        if self._phi is not None and call.name in self._phi:
            return await self._phi.call(call.name, args, call_sid=turn.call_sid), None
        return f"Tool error: there is no tool named {call.name}.", None

    # -- the turn

    async def respond(self, turn: TurnInput) -> AsyncIterator[AgentOutput]:
        # Fixed words need no model round trip: they start at once and TTS has them cached.
        fixed = fixed_reply(turn)
        ctx = turn.outbound
        if turn.kind == "call_started" and ctx is not None:
            # A person: the model opens with why we called (system note). A machine or an
            # unknown answer: the fixed message after the beep, then hang up.
            if not ctx.person:
                org = self._tools.knowledge.title or "our office"
                fixed = (outbound_script.voicemail(ctx, org=org), HangupAction(reason="voicemail"))
        elif fixed is None and turn.kind == "call_started" and self._greeting:
            fixed = (self._greeting, None)
        if fixed is not None:
            yield fixed[0]
            if fixed[1] is not None:
                yield fixed[1]
            return
        messages = turn_messages(
            turn,
            system_prompt=self._system_prompt,
            history_max_tokens=self._settings.agent_history_max_tokens,
        )
        verified = await self._verified(turn.call_sid)
        tools = self.tool_schemas(verified)
        if verified is not None:
            # The history sent may have lost the verification (budget): say who it was.
            messages.insert(1, {"role": "system", "content": verified_note(verified)})
        spoken = False
        final = not tools
        for round_no in range(MAX_TOOL_ROUNDS + 1):
            final = final or round_no == MAX_TOOL_ROUNDS
            calls: list[_ToolCall] = []
            content: list[str] = []
            stream = stream_with_retries(
                partial(self._round, messages, tools, final=final),
                service=SERVICE,
                provider=PROVIDER,
                attempts=self._settings.provider_retries + 1,
                deadline_s=self._settings.provider_timeout_s,
                first_item_timeout_s=self._settings.provider_timeout_s / 2,
                idle_timeout_s=self._settings.provider_timeout_s,
            )
            async for item in stream:
                if isinstance(item, _Calls):
                    calls = item.calls
                elif isinstance(item, UsageReport):
                    yield item
                else:
                    content.append(item)
                    spoken = True
                    yield item
            if not calls:
                return
            if final:
                # A server that ignores tool_choice="none": stop rather than loop.
                log.warning("model called tools after its last tool round; ignored")
                return
            assistant: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(content) or None,
                "tool_calls": [c.message() for c in calls],
            }
            messages.append(assistant)
            # The worker stores the spoken words itself (truncated to what was heard).
            yield HistoryItem(message={**assistant, "content": None})
            outcomes = await asyncio.gather(*(self._timed_tool(c, turn) for c in calls))
            actions: list[HangupAction | TransferAction] = []
            for call, (result, action) in zip(calls, outcomes, strict=True):
                tool_msg = {"role": "tool", "tool_call_id": call.id, "content": result}
                messages.append(tool_msg)
                yield HistoryItem(message=tool_msg)
                if action is not None:
                    actions.append(action)
            for action in actions:
                yield action
            if self._phi is not None and any(c.name == self._phi.verify_tool for c in calls):
                # Verified: the PHI tools from the next round on.
                tools = self.tool_schemas(await self._verified(turn.call_sid))
            if actions:
                if spoken:
                    return  # the model already said its goodbye / hold line
                final = True  # one last round, without tools, for the words that go with it

    async def _timed_tool(
        self, call: _ToolCall, turn: TurnInput
    ) -> tuple[str, HangupAction | TransferAction | None]:
        started = time.perf_counter()
        outcome = await self._run_tool(call, turn)
        elapsed = time.perf_counter() - started
        STAGE_LATENCY.labels(SERVICE, "tool_call").observe(elapsed)
        log.info("tool called", **kv(call=turn.call_sid, tool=call.name, ms=round(elapsed * 1000)))
        return outcome

    async def _round(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, final: bool
    ) -> AsyncIterator[str | _Calls | UsageReport]:
        """One streamed completion: content deltas, then the tool calls it asked for."""
        try:
            stream = await self._client.chat.completions.create(
                model=self._model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
                tools=cast("list[ChatCompletionToolUnionParam]", tools) if tools else omit,
                tool_choice="none" if tools and final else omit,
                # Every completion is bounded: a runaway reply (or a flood of turns) costs
                # at most this many output tokens a round.
                max_tokens=self._settings.openai_max_tokens,
                stream_options={"include_usage": True},  # the last chunk reports the tokens
            )
        except Exception as e:
            raise wrap_error(e) from e
        pending: dict[int, _ToolCall] = {}
        finish: str | None = None
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    yield UsageReport(
                        model=chunk.model or self._model,
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    delta = choice.delta
                    if delta.content:
                        yield delta.content
                    for tc in delta.tool_calls or ():
                        call = pending.setdefault(tc.index, _ToolCall())
                        if tc.id:
                            call.id = tc.id
                        if tc.function is not None:
                            call.name += tc.function.name or ""
                            call.arguments += tc.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except Exception as e:
            raise wrap_error(e) from e
        finally:
            await stream.close()
        if finish is None:
            # The stream ended without a finish_reason: a proxy or server cut it short.
            PROVIDER_ERRORS.labels(SERVICE, PROVIDER, "truncated").inc()
            raise ProviderError("openai stream ended early", provider=PROVIDER, retryable=True)
        calls = [c for _, c in sorted(pending.items()) if c.name]
        for n, call in enumerate(calls):
            call.id = call.id or f"call_{n}"
        if calls:
            yield _Calls(calls=calls)
