"""The cloud providers (Deepgram, OpenAI with MCP tools, ElevenLabs) offline, against our fakes.

``voiceagent up --providers cloud`` and ``voiceagent demo --providers cloud`` start the four
wire-protocol fakes of :mod:`devkit.fakes` as supervised processes on loopback ports and
point the services' official SDKs at them; ``voiceagent fakes`` runs only the fakes and prints
the environment lines that select them.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from voiceagent.ports import free_port, reachable
from voiceagent.supervisor import ProcessSpec

Output = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Fake:
    """One fake: its module, the port its command defaults to, and the provider it stands for."""

    name: str  # process name, and ``devkit.fakes.<name>``
    label: str
    default_port: int
    keyed: bool  # takes ``--api-key``


FAKES: tuple[Fake, ...] = (
    Fake(name="deepgram", label="Deepgram (ASR)", default_port=9400, keyed=True),
    Fake(name="openai", label="OpenAI (agent)", default_port=9100, keyed=True),
    Fake(name="mcp_server", label="MCP tools", default_port=9200, keyed=False),
    Fake(name="elevenlabs", label="ElevenLabs (TTS)", default_port=9300, keyed=True),
)

# The env variable that, when the caller already gives it, means "do not fake this one".
_URL_VARS = {
    "deepgram": "DEEPGRAM_URL",
    "openai": "OPENAI_BASE_URL",
    "mcp_server": "MCP_SERVER_URL",
    "elevenlabs": "ELEVENLABS_BASE_URL",
}
_KEY_VARS = {
    "deepgram": "DEEPGRAM_API_KEY",
    "openai": "OPENAI_API_KEY",
    "elevenlabs": "ELEVENLABS_API_KEY",
}


def fake_url(name: str, port: int, host: str = "127.0.0.1") -> str:
    """The URL a service's setting takes to reach fake ``name`` on ``port``."""
    if name == "deepgram":
        return f"ws://{host}:{port}"
    if name == "openai":
        return f"http://{host}:{port}/v1"
    if name == "mcp_server":
        return f"http://{host}:{port}/mcp"
    return f"http://{host}:{port}"


def provider_env(urls: Mapping[str, str], *, api_key: str) -> dict[str, str]:
    """Settings selecting the three cloud providers, reaching them at ``urls`` (by fake name)."""
    return {
        "ASR_PROVIDER": "deepgram",
        "DEEPGRAM_URL": urls["deepgram"],
        "DEEPGRAM_API_KEY": api_key,
        "AGENT_PROVIDER": "openai",
        "OPENAI_BASE_URL": urls["openai"],
        "OPENAI_API_KEY": api_key,
        "MCP_SERVER_URL": urls["mcp_server"],
        "TTS_PROVIDER": "elevenlabs",
        "ELEVENLABS_BASE_URL": urls["elevenlabs"],
        "ELEVENLABS_API_KEY": api_key,
    }


@dataclass(frozen=True, kw_only=True)
class CloudPlan:
    """What to start (``specs``, ``ports``) and the environment the services get (``env``)."""

    specs: list[ProcessSpec]
    ports: dict[str, int]  # the fakes started here, by name
    env: dict[str, str]
    api_key: str

    def describe(self) -> list[str]:
        """One line per provider: which fake (or given URL) serves it."""
        lines = []
        for fake in FAKES:
            url = self.env[_URL_VARS[fake.name]]
            how = "fake started here" if fake.name in self.ports else "given, not faked"
            lines.append(f"  {fake.label:<17} {url}   ({how})")
        return lines

    def env_lines(self) -> list[str]:
        """``KEY=value`` lines (a ``.env`` file) that point the services at these fakes."""
        return [f"{k}={v}" for k, v in self.env.items()]


def plan_cloud(
    *,
    given: Mapping[str, str] | None = None,
    ports: Mapping[str, int] | None = None,
    api_key: str = "",
    base_env: Mapping[str, str] | None = None,
) -> CloudPlan:
    """Plan the fakes for every cloud provider not already given a URL in ``given``.

    ``ports``: the port of each fake to start (by name; missing: a free one). ``api_key``: the
    key the fakes accept and the services send (default: a random one; a key given in ``given``
    for a provider that is not faked is kept). ``base_env``: extra environment of the fakes
    (the Deepgram fake's embedded recognizer reads the ASR settings).
    """
    given = dict(given or {})
    key = api_key or "fake-" + secrets.token_hex(8)
    urls: dict[str, str] = {}
    started: dict[str, int] = {}
    specs: list[ProcessSpec] = []
    for fake in FAKES:
        if given.get(_URL_VARS[fake.name]):
            urls[fake.name] = given[_URL_VARS[fake.name]]
            continue
        port = (ports or {}).get(fake.name) or free_port()
        started[fake.name] = port
        urls[fake.name] = fake_url(fake.name, port)
        argv = [sys.executable, "-m", f"devkit.fakes.{fake.name}", "--port", str(port)]
        if fake.keyed:
            argv += ["--api-key", key]
        specs.append(ProcessSpec(name=f"fake-{fake.name}", argv=argv, env=dict(base_env or {})))
    env = provider_env(urls, api_key=key)
    for name, var in _KEY_VARS.items():
        if name not in started and given.get(var):
            env[var] = given[var]
    return CloudPlan(specs=specs, ports=started, env=env, api_key=key)


def preferred_ports() -> dict[str, int]:
    """Each fake's documented port when it is free now (stable ``.env`` lines), else a free one."""
    return {
        f.name: free_port() if reachable("127.0.0.1", f.default_port) else f.default_port
        for f in FAKES
    }


__all__ = [
    "FAKES",
    "CloudPlan",
    "Fake",
    "fake_url",
    "plan_cloud",
    "preferred_ports",
    "provider_env",
]
