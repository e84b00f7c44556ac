"""espeak-ng through ctypes (``espeakng-loader`` ships libespeak-ng and its data).

The light fallback: robotic but ~3 ms per sentence, and it has no model to load, so it is what
the worker speaks when the main provider fails. libespeak-ng keeps process-global state and is
not thread-safe, so one engine per process synthesizes on one dedicated thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from services.tts.providers.base import CHUNK_BYTES, TtsProvider
from services.tts.text import normalize_for_speech
from shared.audio import frames, pcm16_to_ulaw8k
from shared.errors import ProviderError
from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)

PROVIDER = "espeak"
VOICE = b"en-us"
RATE_WPM = 165  # a little slower than espeak's 175: phone audio loses consonants

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it a bad data path calls exit()
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Engine:
    """The process's one libespeak-ng instance (global state in C: never two)."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        if lib.espeak_SetVoiceByName(VOICE) != _EE_OK:
            raise RuntimeError("espeak voice not found")
        lib.espeak_SetParameter(_PARAM_RATE, RATE_WPM, 0)
        self.lib = lib
        self.sample_rate = rate
        self._pcm: list[bytes] = []
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int) -> int:
        if wav and n > 0:
            self._pcm.append(ctypes.string_at(wav, n * 2))
        return 0  # 0: continue synthesis

    def synth(self, text: str) -> bytes:
        """Whole utterance as 16-bit PCM at :attr:`sample_rate` (call from one thread only)."""
        self._pcm = []
        raw = text.encode("utf-8")
        size = len(raw) + 1  # with the terminating NUL ctypes appends
        err = self.lib.espeak_Synth(raw, size, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth error {err}")
        pcm, self._pcm = b"".join(self._pcm), []
        return pcm


_engine: _Engine | None = None
_engine_lock = threading.Lock()
# One thread: libespeak-ng must never run two syntheses at once.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")


def get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            try:
                _engine = _Engine()
            except Exception as e:  # missing package/library, bad data path
                raise ProviderError(
                    f"espeak-ng failed to load: {type(e).__name__}: {e}",
                    provider=PROVIDER,
                    retryable=False,
                ) from e
        return _engine


def _synth_mulaw(text: str) -> bytes:
    engine = get_engine()
    try:
        pcm = engine.synth(text)
    except Exception as e:
        raise ProviderError(
            f"espeak synthesis failed: {type(e).__name__}", provider=PROVIDER, retryable=False
        ) from e
    return pcm16_to_ulaw8k(pcm, rate=engine.sample_rate)


class EspeakTts(TtsProvider):
    """Light, instant, robotic TTS; also the worker's last-resort fallback."""

    name = PROVIDER

    def __init__(self, *, settings: Settings) -> None:
        self._settings = settings

    async def warm_up(self) -> None:
        """Load libespeak-ng and its data (a few ms)."""
        engine = await asyncio.get_running_loop().run_in_executor(_executor, get_engine)
        log.info("espeak-ng loaded", **kv(rate=engine.sample_rate))

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield 8 kHz mu-law of ``text`` in chunks (synthesized whole: it takes ~3 ms)."""
        text = normalize_for_speech(text)
        if not text:
            return
        mulaw = await asyncio.get_running_loop().run_in_executor(_executor, _synth_mulaw, text)
        for piece in frames(mulaw, size=CHUNK_BYTES):
            yield piece
