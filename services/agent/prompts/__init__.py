"""The agent persona files (markdown, shipped as package data)."""
