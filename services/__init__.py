"""The four services; each runs as its own process (python -m services.NAME)."""
