"""Which TTS provider a worker runs, from settings.

``TTS_PROVIDER=auto`` (default): ElevenLabs when ``ELEVENLABS_API_KEY`` is set, else local.
``local``: Piper, or espeak-ng when ``LOCAL_TTS_ENGINE=espeak`` or when Piper cannot load.
Any provider but espeak-ng has espeak-ng behind it (:func:`start_fallback`): it speaks the
sentences the provider fails before their first audio (:mod:`.fallback`).
"""

from __future__ import annotations

import logging

from services.tts.providers.base import TtsProvider
from shared.errors import ProviderUnavailable
from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)


def make_local(settings: Settings) -> TtsProvider:
    """The embedded engine: Piper unless ``LOCAL_TTS_ENGINE=espeak``."""
    if settings.local_tts_engine == "espeak":
        from services.tts.providers.espeak import EspeakTts

        return EspeakTts(settings=settings)
    from services.tts.providers.piper import PiperTts

    return PiperTts(settings=settings)


def _make_elevenlabs(settings: Settings) -> TtsProvider:
    from services.tts.providers.elevenlabs import ElevenLabsTts

    provider: TtsProvider = ElevenLabsTts(settings=settings)
    return provider


def make_provider(settings: Settings) -> TtsProvider:
    """The configured provider (not yet warmed up)."""
    wanted = settings.tts_provider
    if wanted == "auto":
        wanted = "elevenlabs" if settings.elevenlabs_api_key.get_secret_value() else "local"
    if wanted == "elevenlabs":
        try:
            return _make_elevenlabs(settings)
        except ImportError as e:
            if settings.tts_provider == "elevenlabs":  # asked for by name: a deployment bug
                raise ProviderUnavailable(provider="elevenlabs", extra="cloud") from e
            log.error(
                "ElevenLabs key is set but the 'cloud' extra is not installed "
                "(pip install 'voiceagent[cloud]'); using the local TTS engine"
            )
    return make_local(settings)


async def start_provider(settings: Settings) -> TtsProvider:
    """Build and warm up the provider; Piper failing to load switches to espeak-ng."""
    provider = make_provider(settings)
    try:
        await provider.warm_up()
    except Exception as e:  # the provider's own errors, or a bug in its SDK
        if provider.name != "piper":
            # A cloud provider unreachable at startup may well come back; segments fall back
            # to espeak one by one meanwhile.
            log.warning("tts provider warm-up failed", **kv(provider=provider.name, error=str(e)))
        else:
            log.error("piper failed to load; using espeak-ng", **kv(error=str(e)))
            await provider.aclose()
            from services.tts.providers.espeak import EspeakTts

            provider = EspeakTts(settings=settings)
            await provider.warm_up()
    log.info("tts provider ready", **kv(provider=provider.name))
    return provider


async def start_fallback(settings: Settings, *, provider: TtsProvider) -> TtsProvider | None:
    """espeak-ng, warmed up, behind any provider but itself (``None``: it would not start)."""
    if provider.name == "espeak":
        return None
    from services.tts.providers.espeak import EspeakTts

    fallback = EspeakTts(settings=settings)
    try:
        await fallback.warm_up()
    except Exception as e:
        log.error("espeak fallback unavailable", **kv(error=str(e)))
        return None
    return fallback
