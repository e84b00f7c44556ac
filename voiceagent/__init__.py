"""The voiceagent command line: up, per-service runners, call simulator, tail."""
