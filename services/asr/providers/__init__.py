"""ASR providers: one module each, behind :class:`services.asr.providers.base.AsrProvider`."""
