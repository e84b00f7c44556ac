"""The web console: live calls, transcripts and latency, and a browser softphone.

``routes.mount_console(app, gateway)`` adds it to the gateway app; see docs/console.md.
"""
