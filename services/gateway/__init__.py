"""Gateway service: terminates Twilio (``/voice`` webhook and the media WebSocket) and owns the
call: ASR claim, caller audio to the bus, reply playback in order, marks, barge-in, hangup.

Modules: ``app`` (FastAPI app, uvicorn server, drain), ``stream`` (the Twilio socket),
``call`` (one call's bus side), ``playback`` (ordering and pacing logic), ``asr_link`` (claim
protocol), ``transcripts`` (the call's one transcript subscription), ``turntaking`` (VAD
barge-in, confirm or revert, silence and call-length guards), ``redelivery`` (work lost with a
dying agent or TTS replica, sent again), ``security`` (signatures, call tokens), ``twiml``,
``runtime`` (process state).
"""
