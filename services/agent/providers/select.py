"""Which agent provider a worker runs, from settings.

``AGENT_PROVIDER=auto`` (default): OpenAI when ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is
set (an OpenAI-compatible server needs no key), else the embedded demo agent. ``openai``:
OpenAI, failing fast without a key or a base URL. ``local``: the demo agent. MCP tools
(``MCP_SERVER_URL``) go to the OpenAI agent only; the demo agent cannot use them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from services.agent.providers.base import AgentProvider
from services.agent.tools import CallTools
from shared.errors import ProviderUnavailable
from shared.logging import kv
from shared.settings import Settings

if TYPE_CHECKING:
    from services.agent.mcp_tools import McpTools

log = logging.getLogger(__name__)


def wanted_provider(settings: Settings) -> str:
    """``openai`` or ``local``: what the settings ask for (before checking the SDK is there)."""
    if settings.agent_provider == "auto":
        configured = settings.openai_api_key.get_secret_value() or settings.openai_base_url
        return "openai" if configured else "local"
    return settings.agent_provider


def _openai_missing(e: ModuleNotFoundError) -> bool:
    return (e.name or "").split(".")[0] == "openai"


def make_provider(settings: Settings, tools: CallTools, mcp: McpTools | None) -> AgentProvider:
    """The configured provider (not yet warmed up).

    An explicit ``AGENT_PROVIDER=openai`` without the SDK fails fast (a deployment bug); under
    ``auto`` the demo agent takes over, with one clear log line.
    """
    if wanted_provider(settings) == "openai":
        try:
            from services.agent.providers.openai import OpenAIAgent
        except ModuleNotFoundError as e:
            if not _openai_missing(e):
                raise
            if settings.agent_provider == "openai":
                raise ProviderUnavailable(provider="openai", extra="cloud") from e
            log.error(
                "OpenAI is configured but the 'cloud' extra is not installed "
                "(pip install 'voiceagent[cloud]'); using the demo agent"
            )
        else:
            return OpenAIAgent(settings=settings, tools=tools, mcp=mcp)
    from services.agent.providers.demo import DemoAgent

    return DemoAgent(settings=settings, tools=tools)


async def start_provider(
    settings: Settings, tools: CallTools
) -> tuple[AgentProvider, McpTools | None]:
    """Connect MCP (when the OpenAI agent will use it), build the provider and warm it up.

    An unreachable MCP server or a failed warm-up is logged; the agent starts anyway.
    """
    mcp: McpTools | None = None
    if wanted_provider(settings) == "openai" and settings.mcp_server_url:
        from services.agent.mcp_tools import connect_mcp

        mcp = await connect_mcp(settings, reserved=tools.names)
    elif settings.mcp_server_url:
        log.warning("MCP_SERVER_URL is set but the demo agent cannot use tools; ignoring it")
    provider = make_provider(settings, tools, mcp)
    if provider.name != "openai" and mcp is not None:
        await mcp.aclose()
        mcp = None
    await provider.warm_up()
    log.info(
        "agent provider ready",
        **kv(
            provider=provider.name,
            mcp_tools=",".join(sorted(mcp.names)) if mcp is not None else "",
        ),
    )
    return provider, mcp
