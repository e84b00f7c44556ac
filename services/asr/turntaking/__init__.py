"""The ASR's turn-taking: when the caller's turn is over."""
