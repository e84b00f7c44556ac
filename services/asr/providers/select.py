"""Which ASR provider a worker runs, from settings.

``ASR_PROVIDER=auto`` (default): Deepgram when ``DEEPGRAM_API_KEY`` is set, else local.
``local``: the embedded VAD + whisper recognizer. ``deepgram``: Deepgram's streaming API
(``cloud`` extra); ``null``: consumes audio, recognizes nothing (capacity benchmarks); asked
for by name without the extra, the worker refuses to start, while
``auto`` says so in one log line and runs the local recognizer.

The worker runs every provider but the local one behind :func:`with_fallback`: the local
recognizer takes over the calls it gives up on (:mod:`.fallback`).
"""

from __future__ import annotations

import logging

from services.asr.providers.base import AsrProvider
from shared.errors import ProviderUnavailable
from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)


def make_local(settings: Settings) -> AsrProvider:
    """The embedded offline recognizer."""
    from services.asr.providers.local import LocalAsr

    return LocalAsr(settings=settings)


def with_fallback(provider: AsrProvider, *, settings: Settings) -> AsrProvider:
    """``provider`` with the local recognizer (loaded on first need) behind it; the local
    recognizer itself, and a provider that has a fallback already, as they are."""
    from services.asr.providers.fallback import FallbackProvider

    if provider.name == "local" or isinstance(provider, FallbackProvider):
        return provider
    return FallbackProvider(primary=provider, make_fallback=lambda: make_local(settings))


def _make_deepgram(settings: Settings) -> AsrProvider:
    from services.asr.providers.deepgram import DeepgramAsr

    return DeepgramAsr(settings=settings)


def make_provider(settings: Settings) -> AsrProvider:
    """The configured provider (not yet warmed up).

    Raises :class:`ProviderUnavailable` when ``ASR_PROVIDER=deepgram`` and the SDK is missing.
    """
    wanted = settings.asr_provider
    if wanted == "null":  # capacity benchmarks only: audio is consumed, nothing recognized
        from services.asr.providers.null import NullAsr

        log.info("asr provider selected", **kv(provider="null", asked="null"))
        return NullAsr()
    if wanted == "auto":
        wanted = "deepgram" if settings.deepgram_api_key.get_secret_value() else "local"
    provider: AsrProvider | None = None
    if wanted == "deepgram":
        try:
            provider = _make_deepgram(settings)
        except ProviderUnavailable as e:
            if settings.asr_provider == "deepgram":  # asked for by name: a deployment bug
                log.error(str(e))
                raise
            log.error(
                "DEEPGRAM_API_KEY is set but the Deepgram SDK is missing: "
                "pip install 'voiceagent[cloud]'; using the local recognizer"
            )
    if provider is None:
        provider = make_local(settings)
    log.info("asr provider selected", **kv(provider=provider.name, asked=settings.asr_provider))
    return provider
