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
    ws_max_message_bytes: int = Field(
        default=64 * 1024,
        description="largest WebSocket frame the gateway's server reads; a larger one closes "
        "its socket (1009)",
    )
    stream_message_rate_per_s: float = Field(
        default=100.0,
        description="messages per second one media stream may send (Twilio: 50 media frames "
        "a second); excess is dropped and counted, the call goes on; 0: no limit",
    )
    stream_message_burst: int = Field(
        default=250, description="messages one media stream may send in a burst"
    )
    stream_dtmf_rate_per_s: float = Field(
        default=10.0,
        description="keys per second one call may press (an autodialer's DTMF is at most "
        "12.5/s, people a few); excess is dropped and counted; 0: no limit",
    )
    stream_dtmf_burst: int = Field(default=20, description="keys one call may press in a burst")
    playback_lead_ms: int = Field(
        default=200, description="how far ahead of real time reply audio is sent to Twilio"
    )
    call_token_ttl_s: float = 60.0
    trusted_proxies: str = Field(
        default="",
        description="comma-separated IPs/CIDRs of reverse proxies whose X-Forwarded-* headers "
        "are believed (client IP for rate limits; proto/host for signature URLs)",
    )
    voice_rate_per_min: float = Field(
        default=120.0,
        description="correctly signed /voice requests per minute per client IP; 0: no limit",
    )
    voice_rate_burst: int = Field(default=30, description="/voice burst per client IP")
    voice_unsigned_rate_per_min: float = Field(
        default=60.0,
        description="refused /voice requests (unsigned, bad signature) per minute per client IP "
        "answered 403, beyond which 429; counted apart from signed traffic; 0: no limit",
    )
    voice_unsigned_burst: int = Field(
        default=20, description="burst of refused /voice requests per client IP"
    )
    admin_token: SecretStr = Field(
        default=SecretStr(""),
        description="bearer token for /calls, /websocket-status, /websocket-metrics and "
        "transcript export, and the web console; empty: those endpoints answer 401 (no console)",
    )
    audit_max_age_days: float = Field(
        default=2190.0, description="audit trail retention (JetStream max_age); HIPAA: 6 years"
    )
    record_calls: bool = Field(default=False, description="store caller audio, encrypted")
    recording_key: SecretStr = Field(
        default=SecretStr(""), description="Fernet key (urlsafe base64, 32 bytes) for recordings"
    )
    recording_dir: Path = Field(default=Path("recordings"), description="where recordings go")
    recording_retention_days: float = Field(
        default=30.0, description="recordings older than this are deleted by the purge"
    )
    env_vars_arn: str = Field(
        default="",
        description="AWS Secrets Manager secret (JSON object of NAME: value) loaded into the "
        "environment at startup; variables already set win",
    )
    drain_grace_s: float = Field(
        default=600.0, description="on SIGTERM, how long the gateway lets live calls finish"
    )

    # Outbound calls (docs/outbound.md)
    outbound_from_number: str = Field(
        default="", description="caller ID of outbound calls (a Twilio number); empty: no dialing"
    )
    outbound_allowed_prefixes: str = Field(
        default="",
        description="comma-separated E.164 prefixes outbound calls may go to (toll-fraud guard), "
        "e.g. +1555,+1212; empty: every destination is refused",
    )
    outbound_max_per_min: int = Field(
        default=10, description="outbound dials per minute, per gateway process; 0: no limit"
    )
    outbound_hours: str = Field(
        default="09:00-20:00",
        description="calling hours in the destination's local time (all of its time zones); "
        "empty: any time",
    )
    outbound_dnc_file: Path | None = Field(
        default=None,
        description="do-not-call list: one E.164 number a line (# comments); the Redis set "
        "va:dnc is checked too",
    )
    outbound_amd_timeout_s: float = Field(
        default=45.0,
        description="an outbound call with no AMD answer by then is treated as a machine "
        "(message, then hang up)",
    )
    outbound_record_ttl_s: float = Field(
        default=3600.0, description="how long a placed call's purpose and parameters are kept"
    )

    prices_file: Path | None = Field(
        default=None,
        description="per-unit price table (TOML) that call costs are computed from; "
        "empty: the bundled shared/prices.toml",
    )

    # Bus and state
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        description="NATS server(s): one URL or a comma-separated list of a cluster's nodes",
    )
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    nats_token: SecretStr = SecretStr("")
    nats_creds_file: str = ""
    nats_nkey_seed_file: str = ""
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    nats_inbox_prefix: str = Field(
        default="_INBOX",
        description="reply inbox prefix; per-service prefixes let NATS permissions keep "
        "each service to its own replies",
    )
    redis_password: SecretStr = Field(
        default=SecretStr(""), description="Redis AUTH password when not in REDIS_URL"
    )
    redis_tls_ca_file: str = Field(default="", description="CA bundle for rediss:// URLs")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="empty: in-memory")
    redis_cluster: bool = Field(
        default=False,
        description="REDIS_URL is a Redis Cluster endpoint (e.g. ElastiCache's configuration "
        "endpoint): the client discovers the shards and follows MOVED/ASK",
    )
    redis_user: str = Field(default="", description="Redis ACL user (AUTH user password)")
    redis_iam_cache_name: str = Field(
        default="",
        description="ElastiCache IAM auth: the cache (replication group) name; set, the password "
        "is a SigV4 token for REDIS_USER, re-signed every 10 minutes (needs the aws extra)",
    )
    redis_iam_region: str = Field(
        default="", description="ElastiCache IAM auth region (default AWS_REGION)"
    )
    redis_iam_serverless: bool = Field(
        default=False, description="ElastiCache IAM auth for a serverless cache"
    )

    # Providers
    asr_provider: Literal["auto", "local", "deepgram", "null"] = "auto"
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
    openai_max_tokens: int = Field(
        default=300,
        ge=1,
        description="max_tokens of every OpenAI completion (a phone reply is two or three "
        "sentences; bounds the cost of a turn)",
    )
    agent_history_max_tokens: int = Field(
        default=4000,
        ge=0,
        description="estimated tokens of conversation history sent to the model per round; "
        "oldest turns dropped first (the system prompt and the caller's latest words always "
        "go); 0: no limit",
    )
    agent_greeting: str = Field(
        default="",
        description="OpenAI agent: fixed first words of every call (no model round trip, TTS "
        "caches them); empty: the model greets",
    )
    mcp_server_url: str = ""
    mcp_verify_tool: str = Field(
        default="verify_member",
        description="the MCP tool that verifies the caller (member id + date of birth); every "
        "other MCP tool reads PHI and is offered only after it succeeded in the same call",
    )
    verify_attempts_per_call: int = Field(
        default=3, ge=1, description="verification attempts allowed per call"
    )
    phi_lookups_per_call: int = Field(
        default=10, ge=1, description="PHI tool calls (MCP lookups) allowed per call"
    )
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
    asr_min_window_s: float = Field(
        default=10.0,
        description="local whisper: shortest window an utterance is decoded on (the window is "
        "max(this, audio + 1 s)); 30: always whisper's full 30 s window",
    )
    asr_batch: int = Field(
        default=4,
        description="local whisper: short utterances waiting together are decoded in one batch "
        "of up to this many (1: one at a time)",
    )
    asr_early_decode_ms: int = Field(
        default=100,
        description="local whisper: start decoding an utterance once its speech has paused this "
        "long, so its words are ready when the pause ends the segment (0: decode at the end)",
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
    vad_level_margin_db: float = Field(
        default=20.0,
        description="VAD speech more than this many dB under the caller's own speech level is "
        "background (a TV, other people) and does not hold a turn open or barge in (0: off)",
    )
    endpointing_ms: int = Field(default=600, description="silence that ends a caller turn")
    smart_endpointing: bool = Field(
        default=True,
        description="every recognizer: cut speech at ENDPOINTING_MIN_MS and let the end-of-turn "
        "decision (words, confidence, prosody) say how long each pause must last, up to "
        "ENDPOINTING_MAX_MS (off: the ENDPOINTING_MS silence timer alone)",
    )
    endpointing_min_ms: int = Field(
        default=300,
        description="smart endpointing: the recognizer's short pause (a finished answer ends here)",
    )
    endpointing_max_ms: int = Field(
        default=2000, description="smart endpointing: pause that ends even an unfinished sentence"
    )
    end_of_turn_rejoin_ms: int = Field(
        default=1500,
        description="smart endpointing: speech this soon after a fragment ended by the longest "
        "wait continues it (one utterance; the reply to the fragment is withdrawn)",
    )
    end_of_turn_acoustic: bool = Field(
        default=True,
        description="smart endpointing: weigh the prosody of the pause (pitch, energy)",
    )
    min_speech_ms: int = Field(default=200, description="shorter sounds are not speech")
    barge_in_min_speech_ms: int = Field(
        default=150,
        description="caller speech over agent audio this long pauses playback (Twilio clear)",
    )
    barge_in_min_words: int = Field(
        default=1, description="words (not backchannels) that confirm a barge-in"
    )
    barge_in_confirm_speech_ms: int = Field(
        default=1500, description="speech this long confirms a barge-in without waiting for words"
    )
    barge_in_short_sound_ms: int = Field(
        default=600,
        description="caller sound over agent audio no longer than this may be a backchannel "
        "('mm-hm') or a cough: playback resumes as soon as it stops",
    )
    barge_in_quick_revert_ms: int = Field(
        default=400,
        description="silence after such a short sound that resumes playback (0: wait for words; "
        "shorter than a comma's pause would resume over 'Wait, stop.')",
    )
    barge_in_soft_pause_ms: int = Field(
        default=250,
        description="caller sound over agent audio only holds playback (no Twilio clear: the "
        "buffered lead plays out, a short sound resumes from the next frame) until this much "
        "speech; 0: clear at BARGE_IN_MIN_SPEECH_MS",
    )
    false_interruption_timeout_ms: int = Field(
        default=1200,
        description="no confirming words this long after the caller stops: resume the agent",
    )
    backchannel_words: str = Field(
        default="mm-hm,mhm,mm,hmm,uh-huh,uh,um,oh,okay,ok,yeah,yes,yep,right,sure,alright,i see",
        description="comma-separated words/phrases that never interrupt the agent",
    )
    silence_reprompt_s: float = Field(
        default=8.0, description="silence before the agent is asked to reprompt (then say bye)"
    )
    silence_hangup_s: float = Field(
        default=10.0,
        description="after the final silence prompt, the gateway ends the call itself this late",
    )
    max_call_s: float = Field(default=900.0, description="call-length limit; 0: none")
    call_limit_grace_s: float = Field(
        default=20.0, description="after the call-limit goodbye starts, end the call by then"
    )

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
    events_retention_h: float = Field(
        default=24.0,
        description="hours the VOICE_EVENTS stream keeps call events, control, transcripts and "
        "replies (PHI) for replay; 0: no stream",
    )
    events_max_mb: int = Field(default=1024, description="VOICE_EVENTS stream size cap (MiB)")
    jetstream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="replicas of the VOICE_AUDIT and VOICE_EVENTS streams the gateway creates; "
        "3 on a 3-node NATS cluster (a node can be lost without losing a record)",
    )

    @property
    def nats_servers(self) -> list[str]:
        """``NATS_URL`` as the list of server URLs to connect to (see :func:`nats_servers`)."""
        return nats_servers(self.nats_url)

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
    def outbound_url(self) -> str:
        """Base URL of the outbound call webhooks (TwiML, status, AMD), as Twilio signs them."""
        return self.public_url.rstrip("/") + "/outbound"

    @property
    def voice_url(self) -> str:
        """The ``/voice`` webhook URL, as configured in Twilio and signed by it."""
        return self.public_url.rstrip("/") + "/voice"


NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def nats_servers(value: str) -> list[str]:
    """The server URLs in a ``NATS_URL`` value: one URL or a comma-separated list.

    A bare ``host:port`` gets ``nats://``. Raises :class:`ValueError` with one line naming
    the entry that cannot be used (bad scheme, no host, a port that is not a number).
    """
    servers: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        url = entry if "://" in entry else f"nats://{entry}"
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError(
                f"NATS_URL: {entry!r} has no port number in 1-65535 "
                "(list several servers separated by commas: nats://a:4222,nats://b:4222)"
            ) from None
        if parts.scheme not in NATS_SCHEMES:
            raise ValueError(
                f"NATS_URL: {entry!r} has scheme {parts.scheme!r}; use one of "
                + ", ".join(f"{s}://" for s in NATS_SCHEMES)
            )
        if not parts.hostname:
            raise ValueError(f"NATS_URL: {entry!r} names no host")
        servers.append(url)
    if not servers:
        raise ValueError("NATS_URL is empty: give nats://host:4222 (or a comma-separated list)")
    return servers


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (read once; with ``ENV_VARS_ARN``, after loading that secret)."""
    settings = Settings()
    if settings.env_vars_arn:
        from shared.secrets import dotenv_names, load_into_environ

        load_into_environ(settings.env_vars_arn, keep=dotenv_names())
        settings = Settings()
    return settings
