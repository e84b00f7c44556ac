"""Tools of an MCP server (streamable HTTP), offered to the model as OpenAI function tools.

One background task owns the MCP client session for the life of the worker (anyio task groups
must be entered and left by the same task); turns call tools through it concurrently. If the
server is down at startup the agent runs with its built-in tools and this task keeps trying
to connect in the background; once connected, the server's tools are offered from the next
turn on. A tool that fails, times out or cannot be reached returns an error *text* for the model
to read out, never an exception into the turn. A call may carry request ``_meta`` (the call
context of :mod:`shared.mcp_context`); which tools a call may use is decided above this module
(:mod:`services.agent.verification`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, cast

from shared.logging import kv
from shared.metrics import PROVIDER_ERRORS, STAGE_LATENCY
from shared.redact import redact
from shared.settings import Settings

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult, RequestParamsMeta, Tool

log = logging.getLogger(__name__)

SERVICE = "agent"
MAX_RESULT_CHARS = 4000  # a tool result goes into every later prompt of the call: keep it bounded
MAX_DESCRIPTION_CHARS = 1024
_OPENAI_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RECONNECT_MAX_S = 30.0


def openai_function(name: str, tool: Tool) -> dict[str, Any]:
    """An MCP tool as an OpenAI chat-completions function tool."""
    schema = dict(tool.input_schema or {})
    if schema.get("type") != "object":
        schema = {"type": "object", "properties": {}}
    schema.setdefault("properties", {})
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": (tool.description or tool.title or name)[:MAX_DESCRIPTION_CHARS],
            "parameters": schema,
        },
    }


def result_text(result: CallToolResult) -> str:
    """What the model reads: the text content (or structured content), errors prefixed."""
    parts: list[str] = []
    for block in result.content:
        text = getattr(block, "text", None)
        if isinstance(text, str):
            parts.append(text)
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, default=str))
    text = "\n".join(parts).strip() or ("failed" if result.is_error else "done")
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + " [truncated]"
    return f"Tool error: {text}" if result.is_error else text


def _leaf_name(e: BaseException) -> str:
    """The type of the first real error inside (nested) exception groups (anyio wraps them)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return type(e).__name__


class McpTools:
    """The tools of the MCP server at ``url``, discovered at startup, callable by name.

    ``reserved`` names (the built-in call tools) win over MCP tools of the same name.
    """

    def __init__(
        self,
        *,
        url: str,
        call_timeout_s: float = 5.0,
        connect_timeout_s: float = 3.0,
        reserved: Collection[str] = (),
    ) -> None:
        self.url = url
        self.call_timeout_s = call_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._reserved = frozenset(reserved)
        self._schemas: list[dict[str, Any]] = []
        self._names: dict[str, str] = {}  # OpenAI-safe name -> MCP tool name
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle

    async def start(self) -> bool:
        """Connect and discover the tools; ``False`` (logged) if the server is not reachable.

        Never raises: the agent must start without its MCP server. Connection keeps being
        retried in the background.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mcp-session")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), self.connect_timeout_s + 1.0)
        if self._client is None:
            log.warning(
                "mcp server unreachable at startup; running with built-in tools only",
                **kv(url=self.url),
            )
            return False
        return True

    async def aclose(self) -> None:
        """Close the session (terminates it on the server)."""
        self._closing = True
        self._lost.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 3.0)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            self._task = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    # -- what the model sees

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI function tools for every MCP tool known (last listing, kept across outages)."""
        return list(self._schemas)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    async def call(
        self, name: str, arguments: dict[str, Any], *, meta: dict[str, Any] | None = None
    ) -> str:
        """Run tool ``name``; the result text, or an error text for the model (never raises).

        ``meta`` goes in the request's ``_meta`` (the call context: :mod:`shared.mcp_context`).
        """
        result = await self.invoke(name, arguments, meta=meta)
        return result if isinstance(result, str) else result_text(result)

    async def invoke(
        self, name: str, arguments: dict[str, Any], *, meta: dict[str, Any] | None = None
    ) -> CallToolResult | str:
        """Run tool ``name``: the server's result, or an error text for the model (never raises)."""
        mcp_name = self._names.get(name)
        if mcp_name is None:
            return f"Tool error: there is no tool named {name}."
        client = self._client
        if client is None:
            return "Tool error: the records system is unavailable right now."
        from mcp import MCPError

        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.call_timeout_s):
                result = await client.call_tool(
                    mcp_name,
                    arguments,
                    read_timeout_seconds=self.call_timeout_s,
                    meta=cast("RequestParamsMeta", meta) if meta else None,
                )
        except TimeoutError:
            self._count("timeout")
            log.warning("mcp tool timed out", **kv(tool=name, timeout_s=self.call_timeout_s))
            return f"Tool error: {name} did not answer in time."
        except MCPError as e:
            self._count("protocol")
            log.warning("mcp tool failed", **kv(tool=name, error=redact(e.message)))
            if e.code == -32000:  # CONNECTION_CLOSED
                self._lost.set()
            return f"Tool error: {e.message}"
        except Exception as e:  # transport failures surface as many types (httpx, anyio)
            self._count("unavailable")
            log.warning("mcp tool unreachable", **kv(tool=name, error=type(e).__name__))
            self._lost.set()
            return "Tool error: the records system is unavailable right now."
        STAGE_LATENCY.labels(SERVICE, "mcp_tool").observe(time.perf_counter() - started)
        if result.is_error:
            self._count("tool_error")
        return result

    # -- the session owner

    def _count(self, kind: str) -> None:
        PROVIDER_ERRORS.labels(SERVICE, "mcp", kind).inc()

    async def _run(self) -> None:
        from mcp import Client

        delay = 1.0
        while not self._closing:
            had_session = False
            try:
                async with Client(self.url, read_timeout_seconds=self.call_timeout_s) as client:
                    async with asyncio.timeout(self.connect_timeout_s):
                        tools = await self._list(client)
                    self._install(tools)
                    self._lost.clear()
                    self._client = client
                    had_session = True
                    self._first_attempt.set()
                    delay = 1.0
                    log.info(
                        "mcp connected", **kv(url=self.url, tools=",".join(sorted(self._names)))
                    )
                    await self._lost.wait()
            except Exception as e:
                # Each failed reconnect is not news; losing a working session is.
                level = logging.WARNING if had_session else logging.DEBUG
                log.log(level, "mcp connection failed", **kv(error=_leaf_name(e)))
            finally:
                self._client = None
                self._first_attempt.set()
            if self._closing:
                break
            if had_session:
                log.warning("mcp session lost; reconnecting", **kv(url=self.url))
            with contextlib.suppress(TimeoutError):
                # Woken early only by aclose (which sets _lost).
                self._lost.clear()
                await asyncio.wait_for(self._lost.wait(), delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    async def _list(self, client: Client) -> list[Tool]:
        tools: list[Tool] = []
        cursor: str | None = None
        for _ in range(50):  # a paginator that never ends must not hang startup
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    def _install(self, tools: list[Tool]) -> None:
        schemas: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        for tool in tools:
            name = re.sub(r"[^A-Za-z0-9_-]", "_", tool.name)[:64]
            if not _OPENAI_NAME.fullmatch(name) or name in names:
                log.warning("mcp tool skipped: unusable name", **kv(tool=tool.name))
                continue
            if name in self._reserved:
                log.warning("mcp tool skipped: a built-in tool has its name", **kv(tool=name))
                continue
            names[name] = tool.name
            schemas.append(openai_function(name, tool))
        self._names, self._schemas = names, schemas


async def connect_mcp(settings: Settings, *, reserved: Collection[str] = ()) -> McpTools | None:
    """The MCP tools of ``settings.mcp_server_url`` (``None`` when unset or the SDK is missing).

    Always returns promptly: an unreachable server is logged and retried in the background.
    """
    if not settings.mcp_server_url:
        return None
    try:
        import mcp  # noqa: F401
    except ImportError:
        log.error(
            "MCP_SERVER_URL is set but the mcp SDK is missing: pip install 'voiceagent[cloud]'"
        )
        return None
    timeout = min(settings.provider_timeout_s, 5.0)
    tools = McpTools(
        url=settings.mcp_server_url,
        call_timeout_s=timeout,
        connect_timeout_s=timeout,
        reserved=reserved,
    )
    await tools.start()
    return tools
