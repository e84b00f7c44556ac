"""Local fakes of external services that speak the real wire protocols (tests, offline demos).

- ``devkit.fakes.openai``: OpenAI-compatible chat completions (streaming SSE, tool calls,
  fault injection); ``python -m devkit.fakes.openai --port N``.
- ``devkit.fakes.mcp_server``: an MCP server over streamable HTTP with two clinic tools;
  ``python -m devkit.fakes.mcp_server --port N``.
- ``devkit.fakes.elevenlabs``: ElevenLabs text-to-speech streaming (ulaw_8000 audio really
  spoken by a local engine, ``xi-api-key``, fault injection: 401/429/500/hang/cut);
  ``python -m devkit.fakes.elevenlabs --port N``.
- ``devkit.fakes.deepgram``: Deepgram live transcription WebSocket (``/v1/listen``,
  ``Authorization: Token``, Results/SpeechStarted/UtteranceEnd/Metadata; the audio really
  recognized by our embedded whisper; fault injection: 401/429/500/hang/cut);
  ``python -m devkit.fakes.deepgram --port N``.
"""
