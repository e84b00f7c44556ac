"""Settings for every service, from the environment and ``.env`` (pydantic-settings).

One class for all services keeps the README table and the code in step; each service reads
only the fields it needs. Names are the environment variable names, case-insensitive.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Provider = Literal["auto", "local", "deepgram", "openai", "elevenlabs"]


class Settings(BaseSettings):
    """All configuration. See README.md for the table of variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Twilio / gateway
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_account_sid: str = ""
    twilio_api_base_url: str = Field(
        default="", description="override Twilio's REST base URL (tests point it at a fake)"
    )
    public_url: str = Field(
        default="http://127.0.0.1:8080", description="public https base URL Twilio reaches"
    )
    host: str = "0.0.0.0"
    port: int = 8080
    validate_signatures: bool = Field(
        default=True, description="check X-Twilio-Signature; never disable in production"
    )
    max_calls: int = Field(default=200, description="concurrent calls per gateway process")
    ws_max_message_bytes: int = 64 * 1024
    playback_lead_ms: int = Field(
        default=200, description="how far ahead of real time reply audio is sent to Twilio"
    )
    call_token_ttl_s: float = 60.0
    drain_grace_s: float = Field(
        default=600.0, description="on SIGTERM, how long the gateway lets live calls finish"
    )

    # Bus and state
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    nats_token: SecretStr = SecretStr("")
    nats_creds_file: str = ""
    nats_nkey_seed_file: str = ""
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="empty: in-memory")

    # Providers
    asr_provider: Literal["auto", "local", "deepgram"] = "auto"
    agent_provider: Literal["auto", "local", "openai"] = "auto"
    tts_provider: Literal["auto", "local", "elevenlabs"] = "auto"

    deepgram_api_key: SecretStr = SecretStr("")
    deepgram_url: str = Field(default="", description="override, e.g. ws://127.0.0.1:9001")
    deepgram_model: str = "nova-3"
    deepgram_utterance_end_ms: int = Field(
        default=1000, description="Deepgram UtteranceEnd gap (>= 1000): ends an utterance in noise"
    )
    asr_stall_s: float = Field(
        default=5.0,
        description="cloud ASR: no message this long while audio flows means the socket is "
        "dead: reconnect and re-send the unfinalized audio",
    )
    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = ""
    openai_model: str = "gpt-4o-mini"
    mcp_server_url: str = ""
    elevenlabs_api_key: SecretStr = SecretStr("")
    elevenlabs_base_url: str = ""
    elevenlabs_voice_id: str = "21m00Tcm4TlvDq8ikWAM"
    elevenlabs_model: str = "eleven_flash_v2_5"

    # Embedded defaults
    agent_prompt_file: Path | None = Field(
        default=None, description="AGENTS.md-style persona and system prompt"
    )
    knowledge_file: Path | None = Field(
        default=None, description="demo agent's question/answer file (markdown)"
    )
    transfer_targets: str = Field(
        default="",
        description="where the agent may transfer calls: comma-separated name=+E164 "
        "(e.g. reception=+15551234567); empty: no transfers",
    )
    local_tts_engine: Literal["piper", "espeak"] = "piper"
    tts_cache_ttl_s: int = Field(
        default=7 * 86400, description="lifetime of cached prompt audio in Redis; 0: no cache"
    )
    tts_cache_max_chars: int = Field(
        default=160, description="segments longer than this are never cached"
    )
    asr_threads: int = Field(default=1, description="CPU threads for the local recognizer")
    asr_decoders: int = Field(
        default=2, description="local whisper decodes run at once per ASR process (queue beyond)"
    )
    asr_max_calls: int = Field(
        default=0,
        description="calls one ASR worker holds at once; 0: the provider's default "
        "(local: 10 per CPU core, cloud: 200)",
    )
    asr_drain_s: float = Field(
        default=15.0, description="on SIGTERM, how long ASR waits for calls to reach a pause"
    )
    vad_threshold: float = 0.5
    endpointing_ms: int = Field(default=600, description="silence that ends a caller turn")
    min_speech_ms: int = Field(default=200, description="shorter sounds are not speech")

    # Deadlines (seconds)
    provider_timeout_s: float = 8.0
    provider_retries: int = 2

    # Logging
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    log_transcripts: bool = Field(
        default=False, description="debug only: log transcript text (still redacted)"
    )
    service_name: str = ""
    metrics_port: int = Field(default=0, description="workers' /metrics port; 0: disabled")

    @property
    def public_host(self) -> str:
        """Host[:port] of PUBLIC_URL (what Twilio connects to)."""
        return urlsplit(self.public_url).netloc

    @property
    def stream_url(self) -> str:
        """The ``wss://`` URL of the media stream, as Twilio signs it."""
        parts = urlsplit(self.public_url)
        scheme = "ws" if parts.scheme == "http" else "wss"
        base = parts.path.rstrip("/")
        return f"{scheme}://{parts.netloc}{base}/twilio-stream"

    @property
    def voice_url(self) -> str:
        """The ``/voice`` webhook URL, as configured in Twilio and signed by it."""
        return self.public_url.rstrip("/") + "/voice"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (read once)."""
    return Settings()
