"""TTS providers: one module each, behind :class:`services.tts.providers.base.TtsProvider`."""
