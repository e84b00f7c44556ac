"""The gateway's turn-taking: who may speak now, decided where the call is (no bus round trip).

- :mod:`.voice_activity`: the VAD model pool (:class:`VadPool`) and :class:`BargeInDetector`,
  phase 1 of a barge-in: caller speech over agent audio pauses playback at once.
- :mod:`.barge_in`: :class:`BargeInArbiter`, phase 2: the recognizer's words confirm the
  interruption, or silence, noise and backchannels revert it (playback resumes where it was cut).
- :mod:`.call_guards`: :class:`CallGuards`, the silence watchdog and the call-length guard.

Two rules they use live in ``shared/`` because other services follow them too:
``shared/backchannel.py`` (words that acknowledge and never take the turn; the agent ignores
them over its reply) and ``shared/level.py`` (sound well under the caller's own speech level is
not the caller; the local recognizer's endpointer gates with it too).

``services/gateway/call.py`` wires them to one call. The end of the caller's turn is decided
by the ASR (``services/asr/``), not here.
"""
