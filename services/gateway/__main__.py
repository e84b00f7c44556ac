"""``python -m services.gateway``: the Twilio-facing FastAPI app under uvicorn."""

from services.gateway.app import main

main()
