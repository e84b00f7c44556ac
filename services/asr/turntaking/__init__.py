"""The ASR's turn-taking: when a caller's turn is over.

:mod:`.end_of_turn` is the one end-of-turn decision every recognizer goes through;
:mod:`.smart_endpointing` is the local recognizer's smart end of turn (a short pause ends a
complete sentence, a long one anything), running above the VAD segmenter
(:mod:`services.asr.segmenter`) and the whisper engine (:mod:`services.asr.whisper_engine`).
"""
